/* metrics.c - counters live in struct worker (see metrics.h); the Prometheus
 * exposition arrives with the admin listener. */
#include "metrics.h"
