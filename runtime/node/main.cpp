// Entry point of the kowalski binary.
#include "runtime/node/cli.hpp"

int main(int argc, char** argv) {
  return kowalski::run_cli(argc, argv);
}
