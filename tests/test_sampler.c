/* test_sampler - the sampler chain against its definition

   Distributions are checked with a chi-square test over many seeded draws (deterministic, so not
   flaky): with k categories the statistic must stay below the 99.9% quantile of chi-square with k-1
   degrees of freedom. The expected probabilities are computed here from the definition of each filter.
*/
#define LLMWALL_IMPLEMENTATION
#include "../llmwall.h"
#include "lwtest.h"
#include <math.h>

static const double chi2_999[] = { 0, 10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32, 26.12, 27.88, 29.59 };   // df 1..10

static lw_sampler* make(int n_vocab, float temp, int top_k, float top_p, float min_p, float penalty, uint64_t seed) {
    lw_sampler_desc d;
    memset(&d, 0, sizeof d);
    d.temperature = temp; d.top_k = top_k; d.top_p = top_p; d.min_p = min_p; d.repeat_penalty = penalty; d.seed = seed;
    lw_sampler* s = NULL;
    lw_sampler_create(&s, n_vocab, &d);
    return s;
}

// draws n times and compares the histogram with `expect` (probabilities, summing to 1)
static void check_distribution(lw_sampler* s, const float* logits, int nv, const double* expect, int n, const char* what) {
    int* count = (int*)calloc((size_t)nv, sizeof(int));
    for (int i = 0; i < n; i++) {
        int32_t t = lw_sampler_sample(s, logits, NULL, 0);
        LWT_REQUIRE(t >= 0 && t < nv, "%s: token %d in range", what, t);
        count[t]++;
    }
    double chi2 = 0;
    int cats = 0;
    for (int i = 0; i < nv; i++) {
        if (expect[i] == 0) { LWT_CHECK(count[i] == 0, "%s: token %d must never be drawn (%d times)", what, i, count[i]); continue; }
        double e = expect[i] * n;
        chi2 += (count[i] - e) * (count[i] - e) / e;
        cats++;
    }
    LWT_CHECK(cats < 2 || chi2 < chi2_999[cats - 1], "%s: chi-square %.2f with %d dof (99.9%% bound %.2f)", what, chi2, cats - 1,
              chi2_999[cats - 1]);
    free(count);
}

static void softmax(const float* x, int n, double t, double* p) {
    double mx = -INFINITY, sum = 0;
    for (int i = 0; i < n; i++) mx = fmax(mx, x[i] / t);
    for (int i = 0; i < n; i++) { p[i] = exp(x[i] / t - mx); sum += p[i]; }
    for (int i = 0; i < n; i++) p[i] /= sum;
}

static const float L8[8] = { 1.0f, 2.5f, -0.5f, 2.0f, 0.0f, 1.5f, -2.0f, 0.5f };   // order: 1 3 5 0 7 4 2 6

static void test_greedy_and_ties(void) {
    lw_sampler* s = make(8, 0.0f, 5, 0.5f, 0.1f, 1.0f, 1);
    LWT_REQUIRE(s, "create");
    LWT_CHECK(lw_sampler_sample(s, L8, NULL, 0) == 1, "argmax");
    lw_sampler_free(s);
    float tie[5] = { 0.5f, 3.0f, 1.0f, 3.0f, 3.0f };
    s = make(5, 0.0f, 0, 0, 0, 1.0f, 1);
    LWT_CHECK(lw_sampler_sample(s, tie, NULL, 0) == 1, "ties go to the lower id");
    lw_sampler_free(s);
    s = make(5, 1.0f, 1, 0, 0, 1.0f, 7);   // top-k 1 at temperature 1 is greedy too
    for (int i = 0; i < 50; i++) LWT_CHECK(lw_sampler_sample(s, tie, NULL, 0) == 1, "top-k 1 keeps the lowest-id best");
    lw_sampler_free(s);
}

static void test_temperature_distribution(void) {
    double p[8];
    for (int k = 0; k < 3; k++) {
        float t = k == 0 ? 1.0f : k == 1 ? 0.5f : 2.0f;
        lw_sampler* s = make(8, t, 0, 0, 0, 0, 42 + k);
        softmax(L8, 8, t, p);
        char what[64];
        snprintf(what, sizeof what, "temperature %.1f", (double)t);
        check_distribution(s, L8, 8, p, 200000, what);
        lw_sampler_free(s);
    }
}

static void test_top_k_distribution(void) {
    double p[8] = {0}, all[8];
    softmax(L8, 8, 1.0, all);
    double z = all[1] + all[3] + all[5];
    p[1] = all[1] / z; p[3] = all[3] / z; p[5] = all[5] / z;
    lw_sampler* s = make(8, 1.0f, 3, 0, 0, 0, 3);
    check_distribution(s, L8, 8, p, 100000, "top-k 3");
    lw_sampler_free(s);
}

static void test_top_p_and_min_p(void) {
    // probabilities 0.5, 0.3, 0.1, 0.1 (as logits log p)
    float lp[4] = { logf(0.5f), logf(0.3f), logf(0.1f), logf(0.1f) };
    double expect_p[4] = { 0.5 / 0.8, 0.3 / 0.8, 0, 0 };                 // top-p 0.75: 0.5 < 0.75 <= 0.8
    lw_sampler* s = make(4, 1.0f, 0, 0.75f, 0, 0, 11);
    check_distribution(s, lp, 4, expect_p, 100000, "top-p 0.75");
    lw_sampler_free(s);
    double expect_m[4] = { 0.5 / 0.8, 0.3 / 0.8, 0, 0 };                 // min-p 0.25: keep p >= 0.125
    s = make(4, 1.0f, 0, 0, 0.25f, 0, 12);
    check_distribution(s, lp, 4, expect_m, 100000, "min-p 0.25");
    lw_sampler_free(s);
    double expect_m2[4] = { 0.5, 0.3, 0.1, 0.1 };                       // min-p 0.19: keep p >= 0.095 (all)
    s = make(4, 1.0f, 0, 0, 0.19f, 0, 13);
    check_distribution(s, lp, 4, expect_m2, 100000, "min-p 0.19");
    lw_sampler_free(s);
    double expect_k[4] = { 1, 0, 0, 0 };                                 // top-k 2 then top-p 0.5: only the first
    s = make(4, 1.0f, 2, 0.5f, 0, 0, 14);
    check_distribution(s, lp, 4, expect_k, 1000, "top-k 2 then top-p 0.5");
    lw_sampler_free(s);
}

static void test_repetition_penalty(void) {
    // logits 2 and -1 for tokens seen recently: 2 / 2 = 1, -1 * 2 = -2; greedy picks what is left
    float x[4] = { 2.0f, 1.5f, -1.0f, -1.5f };
    int32_t hist[3] = { 0, 2, 0 };
    lw_sampler* s = make(4, 0.0f, 0, 0, 0, 2.0f, 1);
    LWT_CHECK(lw_sampler_sample(s, x, hist, 3) == 1, "penalised token 0 (2 -> 1) loses to token 1 (1.5)");
    LWT_CHECK(lw_sampler_sample(s, x, NULL, 0) == 0, "no history, no penalty");
    lw_sampler_free(s);
    // the penalty looks back repeat_last_n tokens only
    lw_sampler_desc d;
    memset(&d, 0, sizeof d);
    d.repeat_penalty = 2.0f;
    d.repeat_last_n = 1;
    lw_sampler_create(&s, 4, &d);
    LWT_CHECK(lw_sampler_sample(s, x, hist, 3) == 1, "last token (0) is penalised");
    int32_t hist2[3] = { 0, 0, 2 };
    LWT_CHECK(lw_sampler_sample(s, x, hist2, 3) == 0, "token 0 is outside the last 1");
    lw_sampler_free(s);
    // penalty then temperature: with penalty 4, token 0 has logit 0.5 < token 1 (1.5)
    double p[4];
    float pen[4] = { 0.5f, 1.5f, -4.0f, -1.5f };
    softmax(pen, 4, 0.7, p);
    s = make(4, 0.7f, 0, 0, 0, 4.0f, 5);
    int32_t h2[2] = { 0, 2 };
    int count[4] = {0};
    for (int i = 0; i < 100000; i++) count[lw_sampler_sample(s, x, h2, 2)]++;
    double chi2 = 0;
    for (int i = 0; i < 4; i++) chi2 += (count[i] - p[i] * 1e5) * (count[i] - p[i] * 1e5) / (p[i] * 1e5);
    LWT_CHECK(chi2 < chi2_999[3], "penalty before temperature: chi-square %.2f", chi2);
    lw_sampler_free(s);
}

static void test_seeds(void) {
    lw_sampler *a = make(8, 1.0f, 0, 0, 0, 0, 99), *b = make(8, 1.0f, 0, 0, 0, 0, 99), *c = make(8, 1.0f, 0, 0, 0, 0, 100);
    int same = 1, differ = 0;
    for (int i = 0; i < 200; i++) {
        int32_t x = lw_sampler_sample(a, L8, NULL, 0), y = lw_sampler_sample(b, L8, NULL, 0), z = lw_sampler_sample(c, L8, NULL, 0);
        same &= x == y;
        differ |= x != z;
    }
    LWT_CHECK(same, "the same seed gives the same draws");
    LWT_CHECK(differ, "another seed gives other draws");
    lw_sampler_free(a); lw_sampler_free(b); lw_sampler_free(c);
}

static void test_bad_parameters(void) {
    lw_sampler* s = NULL;
    lw_sampler_desc d;
    memset(&d, 0, sizeof d);
    d.temperature = -1.0f;
    LWT_CHECK(lw_sampler_create(&s, 8, &d) == LW_INVALID_ARGS && strstr(lw_last_error(), "temperature"), "negative temperature");
    d.temperature = NAN;
    LWT_CHECK(lw_sampler_create(&s, 8, &d) == LW_INVALID_ARGS, "NaN temperature");
    memset(&d, 0, sizeof d);
    d.top_p = 1.5f;
    LWT_CHECK(lw_sampler_create(&s, 8, &d) == LW_INVALID_ARGS && strstr(lw_last_error(), "top_p"), "top_p > 1");
    memset(&d, 0, sizeof d);
    d.top_k = -3;
    LWT_CHECK(lw_sampler_create(&s, 8, &d) == LW_INVALID_ARGS && strstr(lw_last_error(), "top_k"), "top_k < 0");
    LWT_CHECK(lw_sampler_create(&s, 0, NULL) == LW_INVALID_ARGS, "empty vocabulary");
    LWT_CHECK(s == NULL, "nothing created");
}

int main(int argc, char** argv) {
    lwt_init(argc, argv);
    LWT_RUN(test_greedy_and_ties);
    LWT_RUN(test_temperature_distribution);
    LWT_RUN(test_top_k_distribution);
    LWT_RUN(test_top_p_and_min_p);
    LWT_RUN(test_repetition_penalty);
    LWT_RUN(test_seeds);
    LWT_RUN(test_bad_parameters);
    return lwt_finish();
}
