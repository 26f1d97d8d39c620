// The T/B/I model of benchmarks/fit.py for Stan (issue #3 speed benchmark): the same ODE, priors
// and likelihood as benchmarks/models/tbi.toml (pkpd) and the pm.ode model in benchmarks/fit.py.
//   dT/dt = rho_i T B/(B+K) - delta T,  dB/dt = -kappa_i T B,  dI/dt = s T B/(B+K) - kel I
//   T(0) = dose, B(0) = 1, I(0) = I0; log T and log I observed with normal errors.
// Log-normal typical values are sampled on the log scale (log_x ~ normal(mu, sd)), half-normal
// SDs on the log scale (<lower=0>), random effects non-centred (z ~ std_normal()), as in pkpd.
functions {
  vector tbi_rhs(real t, vector y, real rho, real kappa, real delta, real K, real s,
                 real kel) {
    vector[3] dydt;
    real g = y[2] / (y[2] + K);
    dydt[1] = rho * y[1] * g - delta * y[1];
    dydt[2] = -kappa * y[1] * y[2];
    dydt[3] = s * y[1] * g - kel * y[3];
    return dydt;
  }
}
data {
  int<lower=1> N;                 // subjects
  int<lower=1> M;                 // sampling times (the same for every subject)
  array[M] real times;
  real<lower=0> dose;             // T(0)
  matrix[N, M] log_T;             // observed log T
  matrix[N, M] log_I;             // observed log I
  vector[7] prior_mu;             // log-scale prior medians: rho kappa delta K s kel I0
  vector<lower=0>[7] prior_sd;    // log-scale prior SDs
  real<lower=0> omega_sd;         // half-normal scale of omega_rho, omega_kappa
  real<lower=0> sigma_sd;         // half-normal scale of sigma_T, sigma_I
  real<lower=0> rtol;
  real<lower=0> atol;
  int<lower=1> max_num_steps;
}
parameters {
  real log_rho;
  real log_kappa;
  real log_delta;
  real log_K;
  real log_s;
  real log_kel;
  real log_I0;
  real<lower=0> omega_rho;
  real<lower=0> omega_kappa;
  real<lower=0> sigma_T;
  real<lower=0> sigma_I;
  matrix[N, 2] z;
}
model {
  vector[7] typical = [log_rho, log_kappa, log_delta, log_K, log_s, log_kel, log_I0]';
  typical ~ normal(prior_mu, prior_sd);
  omega_rho ~ normal(0, omega_sd);
  omega_kappa ~ normal(0, omega_sd);
  sigma_T ~ normal(0, sigma_sd);
  sigma_I ~ normal(0, sigma_sd);
  to_vector(z) ~ std_normal();
  {
    real delta = exp(log_delta);
    real K = exp(log_K);
    real s = exp(log_s);
    real kel = exp(log_kel);
    vector[3] y0 = [dose, 1.0, exp(log_I0)]';
    for (i in 1:N) {
      real rho_i = exp(log_rho + omega_rho * z[i, 1]);
      real kappa_i = exp(log_kappa + omega_kappa * z[i, 2]);
      array[M] vector[3] y = ode_rk45_tol(tbi_rhs, y0, 0.0, times, rtol, atol, max_num_steps,
                                          rho_i, kappa_i, delta, K, s, kel);
      for (j in 1:M) {
        log_T[i, j] ~ normal(log(y[j][1]), sigma_T);
        log_I[i, j] ~ normal(log(y[j][3]), sigma_I);
      }
    }
  }
}
