"""graphopt's rewrite passes (installed as ``graphopt.passes``). Importing this
package registers every built-in pass with the pass manager."""

from graphopt.passes import cleanup, compression, convert, folding, fusion, lowrank, pruning, quantization  # noqa: F401 - registers the passes
