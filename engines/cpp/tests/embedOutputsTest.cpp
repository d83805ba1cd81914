// Host driver for embedOutputs.h (tests/engines/cpp/test_embed_outputs.py compiles and runs it; no TensorRT):
//   embedOutputsTest choose NAME...                  -> the index chooseOutput picks (-1: none)
//   embedOutputsTest shape pooled|hidden B S D0 D1... -> "ok" or checkShape's reason
//   embedOutputsTest mean < "B S D" mask[B*S] hidden[B*S*D] -> B lines of maskedMean, %.17g
#include "../embedOutputs.h"

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

int main(int argc, char** argv)
{
    std::string const cmd = argc > 1 ? argv[1] : "";
    if (cmd == "choose")
    {
        std::cout << embed::chooseOutput(std::vector<std::string>(argv + 2, argv + argc)) << "\n";
        return 0;
    }
    if (cmd == "shape" && argc >= 5)
    {
        std::vector<int64_t> dims;
        for (int i = 5; i < argc; ++i)
        {
            dims.push_back(std::atoll(argv[i]));
        }
        std::string const why
            = embed::checkShape(std::string(argv[2]) == "pooled", dims, std::atoll(argv[3]), std::atoll(argv[4]));
        std::cout << (why.empty() ? "ok" : why) << "\n";
        return 0;
    }
    if (cmd == "mean")
    {
        int64_t b = 0, s = 0, d = 0;
        std::cin >> b >> s >> d;
        std::vector<int64_t> mask(static_cast<size_t>(b * s));
        std::vector<float> hidden(static_cast<size_t>(b * s * d)); // [B, S, D]
        for (auto& m : mask)
        {
            std::cin >> m;
        }
        for (auto& h : hidden)
        {
            std::cin >> h;
        }
        auto const value = [&hidden](int64_t i) { return hidden[static_cast<size_t>(i)]; };
        for (int64_t row = 0; row < b; ++row)
        {
            for (double x : embed::maskedMean(value, mask, row, s, d))
            {
                std::printf("%.17g ", x);
            }
            std::printf("\n");
        }
        return std::cin ? 0 : 1;
    }
    std::cerr << "usage: embedOutputsTest choose NAME... | shape pooled|hidden B S D... | mean < data\n";
    return 2;
}
