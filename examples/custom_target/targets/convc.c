/* convc: direct 2D convolution, the output row kept in a small accumulator strip. */
#include "convc.h"

void convc_conv2d_f32(const float *x, const float *w, const float *b, float *y, int64_t n, int64_t c,
                      int64_t h, int64_t wd, int64_t k, int64_t r, int64_t s, int64_t sh, int64_t sw,
                      int64_t pt, int64_t pl, int64_t dh, int64_t dw, int64_t oh, int64_t ow) {
    for (int64_t in = 0; in < n; in++) {
        for (int64_t ik = 0; ik < k; ik++) {
            float *out = y + ((in * k + ik) * oh) * ow;
            for (int64_t i = 0; i < oh * ow; i++) {
                out[i] = b[ik];
            }
            for (int64_t ic = 0; ic < c; ic++) {
                const float *plane = x + (in * c + ic) * h * wd;
                const float *taps = w + (ik * c + ic) * r * s;
                for (int64_t ir = 0; ir < r; ir++) {
                    for (int64_t is = 0; is < s; is++) {
                        const float tap = taps[ir * s + is];
                        for (int64_t oy = 0; oy < oh; oy++) {
                            const int64_t iy = oy * sh - pt + ir * dh;
                            if (iy < 0 || iy >= h) {
                                continue;
                            }
                            for (int64_t ox = 0; ox < ow; ox++) {
                                const int64_t ix = ox * sw - pl + is * dw;
                                if (ix >= 0 && ix < wd) {
                                    out[oy * ow + ox] += tap * plane[iy * wd + ix];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
