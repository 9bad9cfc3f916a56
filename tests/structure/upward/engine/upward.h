// An upward include, for the layers test: the check must reject it.
#include "metrics/registry.h"
