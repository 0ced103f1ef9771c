/* SPDX-License-Identifier: MIT */
/* Placeholder until the tool lands. */
int main(void)
{
    return 0;
}
