#!/usr/bin/env python3
"""Expected renders of the chat-template fixtures, made by transformers itself.

Each fixtures/<family>/tokenizer_config.json is a model's template as it ships (chat_template,
bos_token, eos_token). For every conversation in conversations.json this renders the template
with transformers' apply_chat_template (4.45.2: jinja2 with trim_blocks, lstrip_blocks,
loopcontrols, its tojson, raise_exception, strftime_now) on a PreTrainedTokenizerFast built
offline, and writes fixtures/<family>/expected.json: the text, or the error (`raised`: whether
the template's raise_exception raised it, so its message is the contract).

    python tests/chat_template/make_fixtures.py           # (re)write every expected.json
    python tests/chat_template/make_fixtures.py --check   # exit 1 when a file would change
"""
import argparse
import json
import pathlib
import sys

import jinja2
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

HERE = pathlib.Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"


def token_text(token):
    if isinstance(token, dict):
        return token.get("content", "")
    return token or ""


def make_tokenizer(config):
    backend = Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=token_text(config.get("bos_token")),
        eos_token=token_text(config.get("eos_token")),
        chat_template=config["chat_template"],
    )


def render(tokenizer, conversation):
    try:
        text = tokenizer.apply_chat_template(
            conversation["messages"],
            tokenize=False,
            add_generation_prompt=conversation["add_generation_prompt"],
        )
        return {"name": conversation["name"], "output": text}
    except jinja2.exceptions.TemplateError as error:
        # raise_exception raises TemplateError itself; jinja2's own errors are subclasses.
        raised = type(error) is jinja2.exceptions.TemplateError
        return {"name": conversation["name"], "error": str(error), "raised": raised}


def expected_for(family_dir, conversations):
    config = json.loads((family_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    tokenizer = make_tokenizer(config)
    cases = [render(tokenizer, c) for c in conversations]
    return json.dumps({"cases": cases}, indent=1, ensure_ascii=False) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    conversations = json.loads((HERE / "conversations.json").read_text(encoding="utf-8"))
    drifted = []
    families = sorted(p for p in FIXTURES.iterdir() if (p / "tokenizer_config.json").exists())
    for family_dir in families:
        text = expected_for(family_dir, conversations)
        path = family_dir / "expected.json"
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                drifted.append(str(path))
        else:
            path.write_text(text, encoding="utf-8")
    if drifted:
        print("out of date (run tests/chat_template/make_fixtures.py):", *drifted, sep="\n  ")
        return 1
    print(f"{len(families)} families x {len(conversations)} conversations "
          f"{'match' if args.check else 'written'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
