// Fused CPU kernels for G GRU layers that read the same input sequence (metarl.fused_gru).
//
// PyTorch's GRU equations (torch.nn.GRU), per layer g, step t, trial b, unit j:
//   r = σ(W_ir x + b_ir + W_hr h + b_hr),  z = σ(W_iz x + b_iz + W_hz h + b_hz)
//   n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)),  h' = (1 − z) ⊙ n + z ⊙ h
// Per step: one BLAS product on raw pointers (the sgemm_/dgemm_ that libtorch exports: no tensor views or
// operator dispatch per step) and one loop over the B × H gate elements that the compiler vectorises (exp
// from glibc's vector math library, libmvec: built with -ffast-math, see metarl/fused_gru.py), where
// ATen's GRU runs ~10 separate element-wise kernels per step forward and ~20 through autograd backward.
// The backward pass is hand-written back-propagation through time: per step only the recurrent product
// ∂h_{t−1} = ∂gh_t · W_hh; the input projection and the weight gradients are one ATen product each over
// all steps.
#include <torch/extension.h>

#include <cmath>
#include <vector>

namespace {

template <typename scalar_t>
inline scalar_t sigmoid(scalar_t a) {
  return scalar_t(1) / (scalar_t(1) + std::exp(-a));
}

// tanh(a) = 2σ(2a) − 1: one exp, so that the loop vectorises with glibc's vector exp (absolute error
// ~1e-7 in single precision near 0, where tanh(a) ≈ a).
template <typename scalar_t>
inline scalar_t tanh_(scalar_t a) {
  return scalar_t(2) / (scalar_t(1) + std::exp(scalar_t(-2) * a)) - scalar_t(1);
}

// One forward step of layer g: gates from the input projection gi [B, 3H] (its bias included), the
// recurrent product gh = h W_hhᵀ [B, 3H] and its bias b_hh [3H]; writes h_next [B, H] and the saved gates
// [B, 4H] = (r, z, n, W_hn h + b_hn).
template <typename scalar_t>
void forward_gates(const scalar_t* __restrict__ gi, const scalar_t* __restrict__ gh,
                   const scalar_t* __restrict__ b_hh, const scalar_t* __restrict__ h_prev,
                   scalar_t* __restrict__ h_next, scalar_t* __restrict__ saved, int64_t B, int64_t H) {
  for (int64_t b = 0; b < B; ++b) {
    const scalar_t* gi_b = gi + b * 3 * H;
    const scalar_t* gh_b = gh + b * 3 * H;
    const scalar_t* hp = h_prev + b * H;
    scalar_t* hn = h_next + b * H;
    scalar_t* s = saved + b * 4 * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const scalar_t r = sigmoid(gi_b[j] + gh_b[j] + b_hh[j]);
      const scalar_t z = sigmoid(gi_b[H + j] + gh_b[H + j] + b_hh[H + j]);
      const scalar_t ghn = gh_b[2 * H + j] + b_hh[2 * H + j];
      const scalar_t n = tanh_(gi_b[2 * H + j] + r * ghn);
      hn[j] = n + z * (hp[j] - n);
      s[j] = r;
      s[H + j] = z;
      s[2 * H + j] = n;
      s[3 * H + j] = ghn;
    }
  }
}

// One backward step of layer g: from ∂h_t (incoming + carried) to the pre-activation gradients of the
// input projection (d_gi [B, 3H]) and of the recurrent projection (d_gh [B, 3H]; its n part is scaled by
// r) and the direct part of ∂h_{t−1} (dh_direct = ∂h_t ⊙ z).
template <typename scalar_t>
void backward_gates(const scalar_t* __restrict__ dh_carry, const scalar_t* __restrict__ dout,
                    const scalar_t* __restrict__ saved, const scalar_t* __restrict__ h_prev,
                    scalar_t* __restrict__ d_gi, scalar_t* __restrict__ d_gh,
                    scalar_t* __restrict__ dh_direct, int64_t B, int64_t H) {
  for (int64_t b = 0; b < B; ++b) {
    const scalar_t* s = saved + b * 4 * H;
    const scalar_t* hp = h_prev + b * H;
    const scalar_t* dc = dh_carry + b * H;
    const scalar_t* dO = dout + b * H;
    scalar_t* dgi = d_gi + b * 3 * H;
    scalar_t* dgh = d_gh + b * 3 * H;
    scalar_t* dd = dh_direct + b * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const scalar_t r = s[j], z = s[H + j], n = s[2 * H + j], ghn = s[3 * H + j];
      const scalar_t d = dc[j] + dO[j];
      const scalar_t da_n = d * (scalar_t(1) - z) * (scalar_t(1) - n * n);
      const scalar_t da_z = d * (hp[j] - n) * z * (scalar_t(1) - z);
      const scalar_t da_r = da_n * ghn * r * (scalar_t(1) - r);
      dgi[j] = da_r;
      dgi[H + j] = da_z;
      dgi[2 * H + j] = da_n;
      dgh[j] = da_r;
      dgh[H + j] = da_z;
      dgh[2 * H + j] = da_n * r;
      dd[j] = d * z;
    }
  }
}

void check_inputs(const torch::Tensor& x, const torch::Tensor& h0, const torch::Tensor& w_ih,
                  const torch::Tensor& w_hh, const torch::Tensor& b_ih, const torch::Tensor& b_hh) {
  TORCH_CHECK(x.device().is_cpu(), "fused_gru: CPU tensors only");
  for (const auto* t : {&h0, &w_ih, &w_hh, &b_ih, &b_hh}) {
    TORCH_CHECK(t->scalar_type() == x.scalar_type() && t->device().is_cpu(),
                "fused_gru: every tensor must be on the CPU with the inputs' dtype");
  }
  TORCH_CHECK(x.dim() == 3 && h0.dim() == 3 && w_ih.dim() == 3 && w_hh.dim() == 3,
              "fused_gru: x [L, B, I], h0 [G, B, H], w_ih [G, 3H, I], w_hh [G, 3H, H]");
  const auto G = w_ih.size(0), H = w_hh.size(2);
  TORCH_CHECK(w_ih.size(1) == 3 * H && w_hh.size(1) == 3 * H && w_ih.size(2) == x.size(2),
              "fused_gru: weight shapes do not match");
  TORCH_CHECK(h0.size(0) == G && h0.size(1) == x.size(1) && h0.size(2) == H, "fused_gru: h0 shape");
  TORCH_CHECK(b_ih.sizes() == torch::IntArrayRef({G, 3 * H}) && b_hh.sizes() == b_ih.sizes(),
              "fused_gru: bias shapes");
}

}  // namespace

// The BLAS that libtorch_cpu exports (Fortran interface, 32-bit integers; MKL in the x86-64 wheels).
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc);
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
            const double* beta, double* c, const int* ldc);
}

// Column-major C[m, n] = alpha op(A) op(B) + beta C, for float and double.
inline void gemm(char ta, char tb, int m, int n, int k, float alpha, const float* a, int lda, const float* b,
                 int ldb, float beta, float* c, int ldc) {
  sgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}
inline void gemm(char ta, char tb, int m, int n, int k, double alpha, const double* a, int lda,
                 const double* b, int ldb, double beta, double* c, int ldc) {
  dgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}

// gh [B, 3H] = h [B, H] · W_hhᵀ (row-major; W_hh [3H, H]): column-major ghᵀ = W_hh hᵀ.
template <typename scalar_t>
void recurrent_product(const scalar_t* h, const scalar_t* w_hh, scalar_t* gh, int64_t B, int64_t H) {
  gemm('T', 'N', 3 * H, B, H, scalar_t(1), w_hh, H, h, H, scalar_t(0), gh, 3 * H);
}

// dh [B, H] += d_gh [B, 3H] · W_hh (row-major): column-major dhᵀ += W_hhᵀ d_ghᵀ.
template <typename scalar_t>
void recurrent_gradient(const scalar_t* d_gh, const scalar_t* w_hh, scalar_t* dh, int64_t B, int64_t H) {
  gemm('N', 'N', H, B, 3 * H, scalar_t(1), w_hh, H, d_gh, 3 * H, scalar_t(1), dh, H);
}

// Returns (hs [G, L + 1, B, H] with hs[:, 0] = h0, saved gates [G, L, B, 4H]).
std::vector<torch::Tensor> forward(torch::Tensor x, torch::Tensor h0, torch::Tensor w_ih,
                                   torch::Tensor w_hh, torch::Tensor b_ih, torch::Tensor b_hh) {
  check_inputs(x, h0, w_ih, w_hh, b_ih, b_hh);
  x = x.contiguous();
  w_hh = w_hh.contiguous();
  b_hh = b_hh.contiguous();
  const auto L = x.size(0), B = x.size(1), I = x.size(2);
  const auto G = w_ih.size(0), H = w_hh.size(2);
  auto x2d = x.view({L * B, I});
  auto hs = torch::empty({G, L + 1, B, H}, x.options());
  hs.select(1, 0).copy_(h0);
  auto saved = torch::empty({G, L, B, 4 * H}, x.options());
  auto gh = torch::empty({B, 3 * H}, x.options());
  for (int64_t g = 0; g < G; ++g) {
    auto gi = torch::addmm(b_ih[g], x2d, w_ih[g].t());  // every step's input projection: [L·B, 3H]
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fused_gru_forward", [&] {
      const scalar_t* gi_p = gi.data_ptr<scalar_t>();
      const scalar_t* w = w_hh.data_ptr<scalar_t>() + g * 3 * H * H;
      const scalar_t* bias = b_hh.data_ptr<scalar_t>() + g * 3 * H;
      scalar_t* hs_p = hs.data_ptr<scalar_t>() + g * (L + 1) * B * H;
      scalar_t* saved_p = saved.data_ptr<scalar_t>() + g * L * B * 4 * H;
      scalar_t* gh_p = gh.data_ptr<scalar_t>();
      for (int64_t t = 0; t < L; ++t) {
        recurrent_product<scalar_t>(hs_p + t * B * H, w, gh_p, B, H);
        forward_gates<scalar_t>(gi_p + t * B * 3 * H, gh_p, bias, hs_p + t * B * H, hs_p + (t + 1) * B * H,
                                saved_p + t * B * 4 * H, B, H);
      }
    });
  }
  return {hs, saved};
}

// Returns (dx or an empty tensor, dh0, dw_ih, dw_hh, db_ih, db_hh).
std::vector<torch::Tensor> backward(torch::Tensor dout, torch::Tensor x, torch::Tensor hs,
                                    torch::Tensor saved, torch::Tensor w_ih, torch::Tensor w_hh,
                                    bool need_dx) {
  dout = dout.contiguous();
  w_hh = w_hh.contiguous();
  const auto L = x.size(0), B = x.size(1), I = x.size(2);
  const auto G = w_ih.size(0), H = w_hh.size(2);
  auto x2d = x.contiguous().view({L * B, I});
  auto d_gi = torch::empty({G, L, B, 3 * H}, x.options());
  auto d_gh = torch::empty({G, L, B, 3 * H}, x.options());
  auto dh = torch::zeros({G, B, H}, x.options());
  auto dh_next = torch::empty({B, H}, x.options());
  auto dw_ih = torch::empty_like(w_ih), dw_hh = torch::empty_like(w_hh);
  auto db_ih = torch::empty({G, 3 * H}, x.options()), db_hh = torch::empty({G, 3 * H}, x.options());
  auto dx = need_dx ? torch::zeros({L * B, I}, x.options()) : torch::Tensor();
  for (int64_t g = 0; g < G; ++g) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fused_gru_backward", [&] {
      const scalar_t* dout_p = dout.data_ptr<scalar_t>() + g * L * B * H;
      const scalar_t* saved_p = saved.data_ptr<scalar_t>() + g * L * B * 4 * H;
      const scalar_t* hs_p = hs.data_ptr<scalar_t>() + g * (L + 1) * B * H;
      const scalar_t* w = w_hh.data_ptr<scalar_t>() + g * 3 * H * H;
      scalar_t* dgi_p = d_gi.data_ptr<scalar_t>() + g * L * B * 3 * H;
      scalar_t* dgh_p = d_gh.data_ptr<scalar_t>() + g * L * B * 3 * H;
      scalar_t* carry = dh.data_ptr<scalar_t>() + g * B * H;  // ∂h_t from the later steps
      scalar_t* next = dh_next.data_ptr<scalar_t>();
      for (int64_t t = L - 1; t >= 0; --t) {
        backward_gates<scalar_t>(carry, dout_p + t * B * H, saved_p + t * B * 4 * H, hs_p + t * B * H,
                                 dgi_p + t * B * 3 * H, dgh_p + t * B * 3 * H, next, B, H);
        recurrent_gradient<scalar_t>(dgh_p + t * B * 3 * H, w, next, B, H);  // ∂h_{t−1}
        std::copy(next, next + B * H, carry);
      }
    });
    auto dgi2d = d_gi[g].view({L * B, 3 * H});
    auto dgh2d = d_gh[g].view({L * B, 3 * H});
    auto dw_ih_g = dw_ih[g], dw_hh_g = dw_hh[g], db_ih_g = db_ih[g], db_hh_g = db_hh[g];
    torch::mm_out(dw_ih_g, dgi2d.t(), x2d);
    torch::mm_out(dw_hh_g, dgh2d.t(), hs[g].narrow(0, 0, L).reshape({L * B, H}));
    torch::sum_out(db_ih_g, dgi2d, 0);
    torch::sum_out(db_hh_g, dgh2d, 0);
    if (need_dx) dx.addmm_(dgi2d, w_ih[g]);
  }
  return {need_dx ? dx.view({L, B, I}) : torch::Tensor(), dh, dw_ih, dw_hh, db_ih, db_hh};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "fused GRU layers: forward over a sequence");
  m.def("backward", &backward, "fused GRU layers: back-propagation through time");
}
