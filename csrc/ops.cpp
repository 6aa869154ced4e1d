// Operator schemas of the pegasus library, defined once here. Backend files only add
// TORCH_LIBRARY_IMPL(pegasus, <key>, m) registrations (csrc/cpu/*.cpp); the Triton kernels
// (pegasus.kernels) attach to the same names from Python.
#include <Python.h>
#include <torch/library.h>

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
}
