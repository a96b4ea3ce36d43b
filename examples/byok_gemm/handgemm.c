/* handgemm: blocked float32 kernels in portable C (the compiler vectorizes the inner loops). */
#include "handgemm.h"

#include <stddef.h>

/* Four rows of c at a time, eight partial sums per dot product so the additions are independent. */
void handgemm_nt_f32(const float *a, const float *w, const float *bias, float *c, int64_t m, int64_t n,
                     int64_t k) {
    for (int64_t i = 0; i < m; i++) {
        const float *row = a + i * k;
        for (int64_t j = 0; j < n; j++) {
            const float *col = w + j * k;
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            int64_t p = 0;
            for (; p + 8 <= k; p += 8) {
                for (int q = 0; q < 8; q++) {
                    acc[q] += row[p + q] * col[p + q];
                }
            }
            float sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
            for (; p < k; p++) {
                sum += row[p] * col[p];
            }
            c[i * n + j] = sum + (bias != NULL ? bias[j] : 0.0f);
        }
    }
}

void handgemm_conv2d_bias_relu_f32(const float *x, const float *w, const float *b, float *y, int64_t n,
                                   int64_t c, int64_t h, int64_t wd, int64_t k, int64_t r, int64_t s,
                                   int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
                                   int64_t oh, int64_t ow) {
    for (int64_t in = 0; in < n; in++) {
        for (int64_t ik = 0; ik < k; ik++) {
            float *out = y + (in * k + ik) * oh * ow;
            for (int64_t i = 0; i < oh * ow; i++) {
                out[i] = b[ik];
            }
            for (int64_t ic = 0; ic < c; ic++) {
                const float *plane = x + (in * c + ic) * h * wd;
                for (int64_t ir = 0; ir < r; ir++) {
                    for (int64_t is = 0; is < s; is++) {
                        const float tap = w[((ik * c + ic) * r + ir) * s + is];
                        for (int64_t oy = 0; oy < oh; oy++) {
                            const int64_t iy = oy * stride_h - pad_h + ir;
                            if (iy < 0 || iy >= h) {
                                continue;
                            }
                            for (int64_t ox = 0; ox < ow; ox++) {
                                const int64_t ix = ox * stride_w - pad_w + is;
                                if (ix >= 0 && ix < wd) {
                                    out[oy * ow + ox] += tap * plane[iy * wd + ix];
                                }
                            }
                        }
                    }
                }
            }
            for (int64_t i = 0; i < oh * ow; i++) {
                out[i] = out[i] > 0.0f ? out[i] : 0.0f;
            }
        }
    }
}
