// qtune command-line entry point: dispatches to one subcommand per file.
#include <cstdio>

int main(int argc, char** argv) {
  std::puts("qtune: work in progress");
  return 0;
}
