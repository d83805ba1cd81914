// embedOutputs.h: which output `embed` prints, the shape it must have, and the host mean pooling embed falls
// back on for an engine without `sentence_embedding`. Plain C++17, no TensorRT or CUDA types, so
// tests/engines/cpp/test_embed_outputs.py compiles and checks it on any host.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace embed
{
char const* const kPOOLED{"sentence_embedding"}; // [B, W] fp32: export.build --pooling (W: its width)
char const* const kHIDDEN{"last_hidden_state"};  // [B, S, D]
double const kMEAN_CLAMP{1e-9};                  // sentence-transformers: sum_mask.clamp(min=1e-9)

//! Index in `names` (the engine's outputs) of the one to print: sentence_embedding when the engine has it
//! (built with --outputs sentence_embedding, it has no last_hidden_state at all), else last_hidden_state;
//! -1 when it has neither.
inline int32_t chooseOutput(std::vector<std::string> const& names)
{
    auto const at = [&names](char const* name) {
        auto const it = std::find(names.begin(), names.end(), name);
        return it == names.end() ? -1 : static_cast<int32_t>(it - names.begin());
    };
    int32_t const pooled = at(kPOOLED);
    return pooled >= 0 ? pooled : at(kHIDDEN);
}

//! "" when `dims` is the shape the chosen output must have for a [batch, seq] request: [batch, W] pooled (W
//! any width: a Dense layer or a Matryoshka truncation may make it differ from hidden), [batch, seq, D] hidden;
//! otherwise why not.
inline std::string checkShape(bool pooled, std::vector<int64_t> const& dims, int64_t batch, int64_t seq)
{
    size_t const rank = pooled ? 2 : 3;
    bool ok = dims.size() == rank && dims[0] == batch && dims.back() > 0;
    ok = ok && (pooled || dims[1] == seq);
    if (ok)
    {
        return "";
    }
    std::string got;
    for (int64_t d : dims)
    {
        got += (got.empty() ? "" : ", ") + std::to_string(d);
    }
    return std::string(pooled ? kPOOLED : kHIDDEN) + " has shape [" + got + "], expected "
        + (pooled ? "[batch, width]" : "[batch, sequence, hidden]") + " for batch " + std::to_string(batch)
        + " x sequence " + std::to_string(seq);
}

//! Row `row` of hidden [B, S, D] averaged over the tokens whose mask is 1, in double, by sentence-transformers'
//! rule: sum / max(count, 1e-9), so an all-padding row gives zeros. value(i): element i of hidden as a float;
//! mask: [B, S] row-major.
template <typename Value>
std::vector<double> maskedMean(Value value, std::vector<int64_t> const& mask, int64_t row, int64_t seq, int64_t hidden)
{
    std::vector<double> v(static_cast<size_t>(hidden), 0.0);
    double count = 0.0;
    for (int64_t s = 0; s < seq; ++s)
    {
        if (mask[static_cast<size_t>(row * seq + s)] == 0)
        {
            continue;
        }
        count += 1.0;
        for (int64_t k = 0; k < hidden; ++k)
        {
            v[static_cast<size_t>(k)] += value((row * seq + s) * hidden + k);
        }
    }
    for (auto& x : v)
    {
        x /= std::max(count, kMEAN_CLAMP);
    }
    return v;
}
} // namespace embed
