/* Licence line missing: it must be the first line. */
int x;
