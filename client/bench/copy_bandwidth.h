// The device-to-device copy bandwidth every gqa-bench floor divides by: bytes read + written
// per second by cudaMemcpyAsync of 2 GiB on the current device, median of 10 timed copies.
#pragma once

namespace gqa {

double CopyBandwidth();

}  // namespace gqa
