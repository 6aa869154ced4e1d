// Generated from pegasus/packed_prior.py by `python -m pegasus.packed_prior > csrc/packed_prior.h`.
// Do not edit: change LAYOUT there and regenerate (tests/test_packed_prior.py checks this file).
// The packed prior: 1 + 7 * layers + 4 tensors; shapes over keep (h for layer 0, mask A;
// h + 1 after), k (kernel), c (channels), codes (K).
#pragma once

#include <cstdint>

namespace pegasus {
namespace packed {

enum Layer : int64_t { kWv = 0, kBv = 1, kWh = 2, kWvh = 3, kBhv = 4, kWos = 5, kBos = 6 };
enum Head : int64_t { kW1 = 0, kB1 = 1, kW2 = 2, kB2 = 3 };
constexpr int64_t kLayerTensors = 7;
constexpr int64_t kHeadTensors = 4;

// A packed tensor's shape: `dim` sizes (1 or 2) in `size`.
struct Shape {
  int64_t size[2];
  int64_t dim;
};

constexpr int64_t kEmbedding = 0;
inline int64_t count(int64_t layers) { return 1 + kLayerTensors * layers + kHeadTensors; }
inline int64_t layer_index(int64_t l, Layer t) { return 1 + kLayerTensors * l + t; }
inline int64_t head_index(int64_t layers, Head t) { return 1 + kLayerTensors * layers + t; }

inline Shape layer_shape(Layer t, int64_t keep, int64_t k, int64_t c, int64_t codes) {
  (void)keep; (void)k; (void)codes;
  switch (static_cast<int>(t)) {
    case 0: return {{keep * k * c, 2 * c}, 2};  // wv: vertical conv, row-major over (row, dx, c)
    case 1: return {{2 * c, 0}, 1};  // bv: its bias
    case 2: return {{keep * c, 2 * c}, 2};  // wh: horizontal conv, row-major over (dx, c)
    case 3: return {{2 * c, 2 * c}, 2};  // wvh: vertical-to-horizontal 1x1
    case 4: return {{2 * c, 0}, 1};  // bhv: bias of wvh + bias of wh (both enter the horizontal stack once)
    case 5: return {{c, 2 * c}, 2};  // wos: out and skip 1x1 side by side (columns :C out, C: skip)
    case 6: return {{2 * c, 0}, 1};  // bos: their biases
  }
  return {};
}

inline Shape head_shape(Head t, int64_t keep, int64_t k, int64_t c, int64_t codes) {
  (void)keep; (void)k; (void)codes;
  switch (static_cast<int>(t)) {
    case 0: return {{c, c}, 2};  // w1: head 1x1
    case 1: return {{c, 0}, 1};  // b1: its bias
    case 2: return {{c, codes}, 2};  // w2: head 1x1 to the logits
    case 3: return {{codes, 0}, 1};  // b2: its bias
  }
  return {};
}

inline const char* layer_name(Layer t) {
  static const char* names[] = {"wv", "bv", "wh", "wvh", "bhv", "wos", "bos"};
  return names[t];
}

inline const char* head_name(Head t) {
  static const char* names[] = {"w1", "b1", "w2", "b2"};
  return names[t];
}

}  // namespace packed
}  // namespace pegasus
