// The layer the include above reaches for.
#pragma once
