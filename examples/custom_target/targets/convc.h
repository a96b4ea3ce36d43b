/* convc: a hand-written 2D convolution (NCHW input, OIHW weights, float32), the kernel the example target
 * "convc" sends every 2D convolution to instead of kiln's generated code. */
#ifndef CONVC_H_
#define CONVC_H_

#include <stdint.h>

/* y[n][k][oh][ow] = b[k] + sum over c, r, s of x[n][c][oh*sh - pt + r*dh][ow*sw - pl + s*dw] * w[k][c][r][s]
 * (taps outside the input are zero padding). */
void convc_conv2d_f32(const float *x, const float *w, const float *b, float *y, int64_t n, int64_t c,
                      int64_t h, int64_t wd, int64_t k, int64_t r, int64_t s, int64_t sh, int64_t sw,
                      int64_t pt, int64_t pl, int64_t dh, int64_t dw, int64_t oh, int64_t ow);

#endif /* CONVC_H_ */
