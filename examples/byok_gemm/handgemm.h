/* handgemm: a small hand-written kernel library (float32), the "bring your own kernel" example: kiln's
 * dispatch rewrites (handgemm_dispatch.py) send matching subgraphs here instead of generating code. */
#ifndef HANDGEMM_H_
#define HANDGEMM_H_

#include <stdint.h>

/* c[m][n] = sum over p of a[m][p] * w[n][p] (+ bias[n]): a matrix product with the weight stored
 * transposed, as a PyTorch Linear layer or an ONNX Gemm with transB=1 holds it. bias may be NULL. */
void handgemm_nt_f32(const float *a, const float *w, const float *bias, float *c, int64_t m, int64_t n,
                     int64_t k);

/* y = relu(conv2d(x, w) + b): NCHW input, OIHW weights, stride and symmetric padding per axis. */
void handgemm_conv2d_bias_relu_f32(const float *x, const float *w, const float *b, float *y, int64_t n,
                                   int64_t c, int64_t h, int64_t wd, int64_t k, int64_t r, int64_t s,
                                   int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
                                   int64_t oh, int64_t ow);

#endif /* HANDGEMM_H_ */
