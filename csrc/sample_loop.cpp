// pegasus::sample_loop: the cached raster loop of a GatedPixelCNN, owned by C++. It allocates the
// state (pegasus/reference.py documents it), then for every row calls pegasus::sample_row and for
// every position pegasus::sample_position through the dispatcher, which picks the kernel of the
// tensors' device (the C++ kernels of csrc/cpu on the CPU, the Triton ones of pegasus.kernels on
// CUDA). One implementation serves every device (CompositeExplicitAutograd): it only allocates and
// calls ops. pegasus.reference.sample_loop is the same loop in Python.
//
// The GIL is released while it runs (the Triton steps take it back for their Python launchers),
// and Ctrl-C is checked between rows: a pending KeyboardInterrupt is raised in Python.
#include <Python.h>
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <string>

#include "sample_common.h"

namespace pegasus {
namespace {

using RowFn = void(const at::Tensor&, const at::Tensor&, at::TensorList, const at::Tensor&, int64_t,
                   const std::optional<at::Tensor>&);
using PositionFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                      at::TensorList, const at::Tensor&, double, int64_t, int64_t,
                                                      int64_t);

// Raise a pending KeyboardInterrupt (or any signal handler's exception) as the Python exception.
void check_interrupt() {
  if (!Py_IsInitialized()) return;
  pybind11::gil_scoped_acquire gil;
  if (PyErr_CheckSignals() != 0) throw pybind11::error_already_set();
}

std::tuple<at::Tensor, at::Tensor> sample_loop(at::TensorList weights, const at::Tensor& cond,
                                               const at::Tensor& noise, double temperature, int64_t top_k,
                                               bool return_logits, const std::optional<at::Tensor>& cond_map) {
  const PackedPrior p = check_weights(weights);
  const at::Tensor& like = weights[0];
  TORCH_CHECK(noise.dim() == 4 && noise.size(0) >= 1 && noise.size(1) >= 1 && noise.size(2) >= 1 &&
                  noise.size(3) == p.codes,
              "sample_loop: noise should be Gumbel noise [B, H, W, K=", p.codes, "] with B, H, W >= 1, got ",
              noise.sizes());
  TORCH_CHECK(noise.scalar_type() == like.scalar_type() && noise.device() == like.device(),
              "sample_loop: noise should be ", like.scalar_type(), " on ", like.device(), " like the weights, got ",
              noise.scalar_type(), " on ", noise.device());
  const int64_t batch = noise.size(0), height = noise.size(1), width = noise.size(2);
  check_state("cond", cond, like, {p.layers, batch, 2 * p.channels});
  if (cond_map) check_state("cond_map", *cond_map, like, {p.layers, batch, height, width, 2 * p.channels});
  TORCH_CHECK(std::isfinite(temperature) && temperature > 0, "sample_loop: temperature should be > 0, got ",
              temperature);
  auto& dispatcher = c10::Dispatcher::singleton();
  static auto row_op = dispatcher.findSchemaOrThrow("pegasus::sample_row", "").typed<RowFn>();
  static auto position_op = dispatcher.findSchemaOrThrow("pegasus::sample_position", "").typed<PositionFn>();

  const int64_t c = p.channels, h = p.half;
  const auto opts = like.options();
  at::Tensor v_state = at::zeros({p.layers, batch, h + 1, width + 2 * h, c}, opts);
  at::Tensor x_state = at::zeros({p.layers, batch, width + h, c}, opts);
  at::Tensor v2h_row = at::zeros({p.layers, batch, width, 2 * c}, opts);
  at::Tensor grid = at::zeros({batch, height, width}, opts.dtype(at::kLong));
  at::Tensor logits = return_logits ? at::empty({batch, height, width, p.codes}, opts) : at::empty({0}, opts);

  std::optional<pybind11::gil_scoped_release> no_gil;
  if (Py_IsInitialized() && PyGILState_Check()) no_gil.emplace();
  const CheckedLoop checked;  // checked above, once: the C++ steps skip their checks (sample_common.h)
  for (int64_t i = 0; i < height; ++i) {
    check_interrupt();
    row_op.call(v_state, v2h_row, weights, cond, i, cond_map);
    x_state.zero_();
    for (int64_t j = 0; j < width; ++j) {
      auto [codes, step_logits] =
          position_op.call(v_state, x_state, v2h_row, weights, noise.select(1, i).select(1, j), temperature, top_k, i, j);
      grid.select(1, i).select(1, j).copy_(codes);
      if (return_logits) logits.select(1, i).select(1, j).copy_(step_logits);
    }
  }
  return {grid, logits};
}

}  // namespace

TORCH_LIBRARY_IMPL(pegasus, CompositeExplicitAutograd, m) { m.impl("sample_loop", &sample_loop); }

}  // namespace pegasus
