// llama_cpp_greedy: reference greedy decoding and tokenization with llama.cpp, as JSON.
//
// Built by scripts/build-llama-cpp.sh against llama.h of the vendored llama.cpp
// (llama-cpp-python 0.3.36) into target/llama.cpp/build-clang/bin/llama-cpp-greedy.
//
// Greedy mode (prints one JSON object on stdout):
//   llama-cpp-greedy -m MODEL.gguf (-p TEXT | -f PROMPT_FILE) [-n 48] [--threads 1]
//                    [--add-special auto|0|1] [--no-parse-special] [--ignore-eos]
//                    [--no-repack] [--flash-attn auto|on|off] [--verbose]
//   The prompt is tokenized with special-token parsing on (unless --no-parse-special) and
//   add_special as the model's metadata says (tokenizer.ggml.add_bos_token etc.) unless
//   overridden; the JSON says what was used. The prompt is evaluated in one batch, then N
//   tokens are greedy-decoded (argmax; ties -> lowest id), one llama_decode per token.
//   Stops early at an end-of-generation token (recorded as the last step) unless --ignore-eos.
//   Each step: token, piece (special tokens rendered; invalid UTF-8 replaced by U+FFFD),
//   piece_hex (exact bytes), top1_logit, top2_id, top2_logit, gap = top1 - top2.
//
// Tokenize-only mode (JSON Lines on stdout, one object per input line):
//   llama-cpp-greedy -m MODEL.gguf --tokenize-only --input-hex FILE [--add-special auto|0|1]
//   FILE has one string per line, hex-encoded UTF-8 bytes (empty line = empty string).
//   Output per line: {"ids_parse_special":[...],"ids_plain":[...]}; add_special defaults to
//   OFF here. Loads the vocabulary only.
//
// Deterministic: 1 thread by default, no sampling randomness, logits in float32.
#include "llama.h"

#include <cinttypes>
#include <clocale>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

static bool g_verbose = false;

static void log_cb(enum ggml_log_level level, const char * text, void *) {
    if (g_verbose || level == GGML_LOG_LEVEL_ERROR) {
        fputs(text, stderr);
    }
}

// JSON string escaping; invalid UTF-8 sequences become U+FFFD.
static std::string json_str(const std::string & s) {
    std::string out = "\"";
    const unsigned char * p = (const unsigned char *) s.data();
    size_t n = s.size(), i = 0;
    while (i < n) {
        unsigned char c = p[i];
        if (c < 0x80) {
            switch (c) {
                case '"':  out += "\\\""; break;
                case '\\': out += "\\\\"; break;
                case '\n': out += "\\n"; break;
                case '\r': out += "\\r"; break;
                case '\t': out += "\\t"; break;
                case '\b': out += "\\b"; break;
                case '\f': out += "\\f"; break;
                default:
                    if (c < 0x20 || c == 0x7f) {
                        char buf[8];
                        snprintf(buf, sizeof(buf), "\\u%04x", c);
                        out += buf;
                    } else {
                        out += (char) c;
                    }
            }
            i++;
            continue;
        }
        int len = 0;
        uint32_t cp = 0;
        if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; }
        else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; }
        else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; }
        bool ok = len > 0 && i + len <= n;
        for (int k = 1; ok && k < len; k++) {
            if ((p[i + k] & 0xC0) != 0x80) ok = false;
            else cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        if (ok) {
            // reject overlong, surrogates, out of range
            if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
                (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) {
                ok = false;
            }
        }
        if (ok) {
            out.append(s, i, len);
            i += len;
        } else {
            out += "\xEF\xBF\xBD";
            i += 1;
        }
    }
    out += "\"";
    return out;
}

static std::string hex_of(const std::string & s) {
    static const char * d = "0123456789abcdef";
    std::string out;
    for (unsigned char c : s) { out += d[c >> 4]; out += d[c & 15]; }
    return out;
}

static bool unhex(const std::string & h, std::string & out) {
    out.clear();
    if (h.size() % 2) return false;
    auto v = [](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        return -1;
    };
    for (size_t i = 0; i < h.size(); i += 2) {
        int a = v(h[i]), b = v(h[i + 1]);
        if (a < 0 || b < 0) return false;
        out += (char) (a * 16 + b);
    }
    return true;
}

static std::string ids_json(const std::vector<llama_token> & ids) {
    std::string s = "[";
    for (size_t i = 0; i < ids.size(); i++) {
        if (i) s += ",";
        s += std::to_string(ids[i]);
    }
    return s + "]";
}

static std::vector<llama_token> tokenize(const llama_vocab * vocab, const std::string & text, bool add_special,
                                         bool parse_special) {
    int n = llama_tokenize(vocab, text.data(), (int32_t) text.size(), nullptr, 0, add_special, parse_special);
    if (n == INT32_MIN) { fprintf(stderr, "tokenize overflow\n"); exit(1); }
    std::vector<llama_token> ids(n < 0 ? -n : n);
    int m = llama_tokenize(vocab, text.data(), (int32_t) text.size(), ids.data(), (int32_t) ids.size(), add_special,
                           parse_special);
    if (m < 0) { fprintf(stderr, "tokenize failed\n"); exit(1); }
    ids.resize(m);
    return ids;
}

static std::string piece_of(const llama_vocab * vocab, llama_token id) {
    std::vector<char> buf(64);
    int n = llama_token_to_piece(vocab, id, buf.data(), (int32_t) buf.size(), 0, true);
    if (n < 0) {
        buf.resize(-n);
        n = llama_token_to_piece(vocab, id, buf.data(), (int32_t) buf.size(), 0, true);
    }
    return std::string(buf.data(), n < 0 ? 0 : n);
}

static std::string fmt_float(float f) {
    if (std::isnan(f) || std::isinf(f)) return "null";
    char buf[64];
    snprintf(buf, sizeof(buf), "%.9g", (double) f);  // round-trips float32
    return buf;
}

static void usage(const char * argv0) {
    fprintf(stderr,
            "usage: %s -m MODEL.gguf (-p TEXT | -f FILE) [-n 48] [--threads 1] [--add-special auto|0|1]\n"
            "          [--no-parse-special] [--ignore-eos] [--no-repack] [--flash-attn auto|on|off] [--verbose]\n"
            "       %s -m MODEL.gguf --tokenize-only --input-hex FILE [--add-special auto|0|1]\n",
            argv0, argv0);
}

int main(int argc, char ** argv) {
    std::setlocale(LC_NUMERIC, "C");

    std::string model_path, prompt, prompt_file, input_hex;
    bool have_prompt = false;
    int n_predict = 48;
    int n_threads = 1;
    std::string add_special_opt = "auto";
    bool parse_special = true;
    bool ignore_eos = false;
    bool tokenize_only = false;
    bool no_repack = false;
    std::string flash_attn = "auto";

    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        auto next = [&]() -> std::string {
            if (i + 1 >= argc) { usage(argv[0]); exit(2); }
            return argv[++i];
        };
        if (a == "-m" || a == "--model") model_path = next();
        else if (a == "-p" || a == "--prompt") { prompt = next(); have_prompt = true; }
        else if (a == "-f" || a == "--prompt-file") prompt_file = next();
        else if (a == "-n" || a == "--n-predict") n_predict = std::atoi(next().c_str());
        else if (a == "-t" || a == "--threads") n_threads = std::atoi(next().c_str());
        else if (a == "--add-special") add_special_opt = next();
        else if (a == "--no-parse-special") parse_special = false;
        else if (a == "--ignore-eos") ignore_eos = true;
        else if (a == "--no-repack") no_repack = true;
        else if (a == "--flash-attn") flash_attn = next();
        else if (a == "--tokenize-only") tokenize_only = true;
        else if (a == "--input-hex") input_hex = next();
        else if (a == "--verbose") g_verbose = true;
        else if (a == "-h" || a == "--help") { usage(argv[0]); return 0; }
        else { fprintf(stderr, "unknown argument: %s\n", a.c_str()); usage(argv[0]); return 2; }
    }
    if (model_path.empty()) { usage(argv[0]); return 2; }
    if (add_special_opt != "auto" && add_special_opt != "0" && add_special_opt != "1") { usage(argv[0]); return 2; }
    if (flash_attn != "auto" && flash_attn != "on" && flash_attn != "off") { usage(argv[0]); return 2; }
    if (!prompt_file.empty()) {
        std::ifstream in(prompt_file, std::ios::binary);
        if (!in) { fprintf(stderr, "cannot read %s\n", prompt_file.c_str()); return 1; }
        std::stringstream ss;
        ss << in.rdbuf();
        prompt = ss.str();
        have_prompt = true;
    }
    if (!tokenize_only && !have_prompt) { usage(argv[0]); return 2; }
    if (tokenize_only && input_hex.empty()) { usage(argv[0]); return 2; }

    llama_log_set(log_cb, nullptr);
    llama_backend_init();

    llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers = 0;
    mparams.vocab_only = tokenize_only;
    if (no_repack) mparams.use_extra_bufts = false;
    llama_model * model = llama_model_load_from_file(model_path.c_str(), mparams);
    if (!model) { fprintf(stderr, "error: unable to load model %s\n", model_path.c_str()); return 1; }
    const llama_vocab * vocab = llama_model_get_vocab(model);

    if (tokenize_only) {
        bool add_special = add_special_opt == "1";  // default OFF in this mode
        std::ifstream in(input_hex);
        if (!in) { fprintf(stderr, "cannot read %s\n", input_hex.c_str()); return 1; }
        std::string line, text;
        while (std::getline(in, line)) {
            if (!line.empty() && line.back() == '\r') line.pop_back();
            if (!unhex(line, text)) { fprintf(stderr, "bad hex line\n"); return 1; }
            auto a = tokenize(vocab, text, add_special, true);
            auto b = tokenize(vocab, text, add_special, false);
            printf("{\"ids_parse_special\":%s,\"ids_plain\":%s}\n", ids_json(a).c_str(), ids_json(b).c_str());
        }
        llama_model_free(model);
        llama_backend_free();
        return 0;
    }

    const bool meta_add_bos = llama_vocab_get_add_bos(vocab);
    const bool meta_add_eos = llama_vocab_get_add_eos(vocab);
    const bool add_special = add_special_opt == "auto" ? (meta_add_bos || meta_add_eos) : add_special_opt == "1";
    std::vector<llama_token> prompt_ids = tokenize(vocab, prompt, add_special, parse_special);
    if (prompt_ids.empty()) { fprintf(stderr, "empty prompt\n"); return 1; }
    const int n_prompt = (int) prompt_ids.size();

    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = n_prompt + n_predict + 8;
    cparams.n_batch = n_prompt;
    cparams.n_ubatch = n_prompt;
    cparams.n_threads = n_threads;
    cparams.n_threads_batch = n_threads;
    cparams.no_perf = true;
    cparams.flash_attn_type = flash_attn == "on" ? LLAMA_FLASH_ATTN_TYPE_ENABLED
                            : flash_attn == "off" ? LLAMA_FLASH_ATTN_TYPE_DISABLED : LLAMA_FLASH_ATTN_TYPE_AUTO;
    llama_context * ctx = llama_init_from_model(model, cparams);
    if (!ctx) { fprintf(stderr, "error: failed to create context\n"); return 1; }

    const int n_vocab = llama_vocab_n_tokens(vocab);
    std::vector<llama_token> cur = prompt_ids;
    std::string steps_json;
    std::string stop_reason = "n_predict";
    int n_steps = 0;
    for (int step = 0; step < n_predict; step++) {
        llama_batch batch = llama_batch_get_one(cur.data(), (int32_t) cur.size());
        int rc = llama_decode(ctx, batch);
        if (rc != 0) { fprintf(stderr, "error: llama_decode returned %d\n", rc); return 1; }
        const float * logits = llama_get_logits_ith(ctx, -1);
        if (!logits) { fprintf(stderr, "error: no logits\n"); return 1; }
        int top1 = -1, top2 = -1;
        for (int v = 0; v < n_vocab; v++) {
            float x = logits[v];
            if (top1 < 0 || x > logits[top1]) { top2 = top1; top1 = v; }
            else if (top2 < 0 || x > logits[top2]) { top2 = v; }
        }
        const std::string piece = piece_of(vocab, top1);
        const float gap = logits[top1] - logits[top2];
        if (n_steps) steps_json += ",\n";
        steps_json += "    {\"step\":" + std::to_string(step) + ",\"token\":" + std::to_string(top1) +
                      ",\"piece\":" + json_str(piece) + ",\"piece_hex\":\"" + hex_of(piece) +
                      "\",\"top1_logit\":" + fmt_float(logits[top1]) + ",\"top2_id\":" + std::to_string(top2) +
                      ",\"top2_logit\":" + fmt_float(logits[top2]) + ",\"gap\":" + fmt_float(gap) + "}";
        n_steps++;
        if (!ignore_eos && llama_vocab_is_eog(vocab, top1)) { stop_reason = "eog"; break; }
        cur.assign(1, top1);
    }

    char desc[256];
    llama_model_desc(model, desc, sizeof(desc));
    printf("{\n");
    printf("  \"model\": %s,\n", json_str(model_path).c_str());
    printf("  \"model_desc\": %s,\n", json_str(desc).c_str());
    printf("  \"system_info\": %s,\n", json_str(llama_print_system_info()).c_str());
    printf("  \"n_threads\": %d,\n", n_threads);
    printf("  \"repack\": %s,\n", no_repack ? "false" : "true");
    printf("  \"flash_attn\": \"%s\",\n", flash_attn.c_str());
    printf("  \"prompt\": %s,\n", json_str(prompt).c_str());
    printf("  \"add_special\": %s,\n", add_special ? "true" : "false");
    printf("  \"add_special_source\": %s,\n", json_str(add_special_opt == "auto" ? "model metadata" : "command line").c_str());
    printf("  \"meta_add_bos\": %s,\n", meta_add_bos ? "true" : "false");
    printf("  \"meta_add_eos\": %s,\n", meta_add_eos ? "true" : "false");
    printf("  \"parse_special\": %s,\n", parse_special ? "true" : "false");
    printf("  \"prompt_ids\": %s,\n", ids_json(prompt_ids).c_str());
    printf("  \"n_predict\": %d,\n", n_predict);
    printf("  \"stop_reason\": %s,\n", json_str(stop_reason).c_str());
    printf("  \"steps\": [\n%s\n  ]\n", steps_json.c_str());
    printf("}\n");

    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
