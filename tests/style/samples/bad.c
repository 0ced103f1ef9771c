/* SPDX-License-Identifier: MIT */
/* Every rule of tests/check-style broken once; bad.expected lists them. */
#include <stdio.h>

typedef struct bad_type {
    int a;
} bad_type;

typedef int (*bad_callback)(int);

static int BadName(int x)
{
    int i = 0;
    // a C99 comment

    for (int j = 0; j < x; j++) {
        i += j;
    }
    for (i = 0; i < x; i++)
        x--;
    if (x)
        return 1;
    if(x) {
        return 2;
    }
    else
        x++;
    while (x < 5) x++;
    do
        x++;
    while (x < 9);
    return i + x; 
}

int	tabbed;
int this_line_is_far_too_long_for_the_project_which_allows_at_most_eighty_columns;
typedef unsigned char bad_bytes16 __attribute__((vector_size(16)));
