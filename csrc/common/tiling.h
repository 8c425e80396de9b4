// The fixed tiling of a [rows, cols] elementwise op that the CPU and CUDA BCE kernels share.
// Torch-free, like logit_math.h.
#pragma once

#include <cstdint>

#include "host_device.h"

namespace logitops {

// Fixed tiling of a [rows, cols] elementwise op into work items of about kTileElems elements.
// Reductions sum one partial per tile, then the tiles in order: the same bits for any thread
// count. Also used by the CUDA launcher so both devices split work the same way.
struct Tiling {
  int64_t rows, cols, row_tile, col_tile, row_tiles, col_tiles;
  LOGITOPS_HD int64_t num_tiles() const { return row_tiles * col_tiles; }
};

LOGITOPS_HD Tiling make_tiling(int64_t rows, int64_t cols, int64_t tile_elems) {
  Tiling t;
  t.rows = rows;
  t.cols = cols;
  t.col_tile = cols < tile_elems ? (cols > 0 ? cols : 1) : tile_elems;
  t.row_tile = tile_elems / t.col_tile;
  if (t.row_tile < 1) t.row_tile = 1;
  t.row_tiles = (rows + t.row_tile - 1) / t.row_tile;
  t.col_tiles = (cols + t.col_tile - 1) / t.col_tile;
  return t;
}

}  // namespace logitops
