/*
 * ctl.c - the controller's one process state, ctl (controllerd.h): configuration, loop,
 * database, hosts. main.c fills it at start-up; every layer reads it. It lives in a file
 * of its own so that reading it ties no file to main.c (tests/check_layers.sh would see
 * a circle through main.c), and unit tests define their own.
 */
#include "controllerd.h"

struct controller ctl;
