// Operator schemas of the pegasus library, defined once here. Backend files only add kernels to
// these names: TORCH_LIBRARY_IMPL(pegasus, <key>, m) in C++ (csrc/cpu/*.cpp), and the Triton kernels
// (pegasus.kernels) for CUDA with torch.library.register_kernel from Python. Which backends exist
// for which op is one table, pegasus/backends.py.
#include <Python.h>
#include <torch/library.h>

#include <string>

namespace pegasus {
const char* cpu_capability();  // csrc/cpu/vec_kernels.h
}

extern "C" {
// `import pegasus._C` runs the static registrations below; the module itself is empty.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(pegasus, m) {
  // z: [N, D] floating, codebook: [K, D] same dtype and device.
  // Returns (indices [N] int64, min_sq_dist [N] z.dtype). Ties go to the lowest index; a row
  // whose distances are NaN gets index 0 and distance NaN (torch.argmin's rule on the reference).
  m.def("nearest_code(Tensor z, Tensor codebook) -> (Tensor, Tensor)");

  // The cached sampler of a GatedPixelCNN (pegasus/reference.py documents the state tensors,
  // pegasus/packed_prior.py the packed `weights`). Row start: every layer's vertical convolution
  // over row `row`; writes v2h_row and the next layers' rows of v_state. cond [L, B, 2C] holds
  // alpha's gate offsets; cond_map [L, B, H, W, 2C], when given, offsets per position (a bottom
  // prior's top grid), added to cond's.
  m.def(
      "sample_row(Tensor(a!) v_state, Tensor(b!) v2h_row, Tensor[] weights, Tensor cond, int row, "
      "Tensor? cond_map=None) -> ()");
  // One position: every layer's horizontal stack at (row, col), the logits [B, K], the Gumbel-max
  // code argmax(logits / temperature + noise) among the top_k largest logits (top_k <= 0: all),
  // and its embedding written into v_state and x_state. Returns (codes [B] int64, logits [B, K]).
  m.def(
      "sample_position(Tensor(a!) v_state, Tensor(b!) x_state, Tensor v2h_row, Tensor[] weights, "
      "Tensor noise, float temperature, int top_k, int row, int col) -> (Tensor, Tensor)");
  // The whole raster loop in C++ (csrc/sample_loop.cpp): noise [B, H, W, K] -> (grid [B, H, W]
  // int64, logits [B, H, W, K] when return_logits, else an empty tensor). It calls the two step ops
  // above through the dispatcher, which picks their kernel by the tensors' device.
  m.def(
      "sample_loop(Tensor[] weights, Tensor cond, Tensor noise, float temperature, int top_k, "
      "bool return_logits, Tensor? cond_map=None) -> (Tensor, Tensor)");
  // The build of the CPU step kernels' vector code this process runs: "avx512", "avx2" or
  // "default" (csrc/cpu/vec_kernels.cpp; ATEN_CPU_CAPABILITY lowers it). For `pegasus info`, benches.
  m.def("_cpu_capability() -> str", [] { return std::string(pegasus::cpu_capability()); });
}
