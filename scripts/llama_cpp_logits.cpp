// llama_cpp_logits: llama.cpp's logits at every position for given token ids.
//
// Compiled on demand by scripts/make-tiny-llama3.py (like llama_cpp_greedy.cpp in
// scripts/build-llama-cpp.sh) against include/llama.h and libllama.so into
// target/llama.cpp/build-clang/bin/llama-cpp-logits.
//
//   llama-cpp-logits -m MODEL.gguf --ids 1000,791,272 --out LOGITS.f32 [--threads 1]
//                    [--kv-type f32|f16] [--flash-attn auto|on|off] [--no-repack]
//                    [--dump DIR]
//
// The ids are evaluated from position 0 in one batch (one sequence, no KV cache reuse),
// with logits requested for every position. LOGITS.f32 receives n_ids * n_vocab
// little-endian float32 values, row-major (row t = logits after ids[0..t]). One JSON line
// on stdout: {"n_tokens":N,"n_vocab":V,"kv_type":"f32","flash_attn":"off"}. CPU only, 1 thread
// by default.
// Defaults are chosen for reference logits: F32 KV cache and flash attention off. llama.cpp's
// own defaults (F16 KV cache, flash attention auto = on for CPU) round K/V (the CPU flash
// attention kernel also with an F32 cache) to half precision, which moves logits of
// tiny-llama3 by ~1e-2 instead of ~1e-5; --kv-type f16 --flash-attn auto gives those.
//
// --dump DIR writes every f32/f16 result of the graph (through the scheduler's eval
// callback) to DIR/NNNN-<name>.f32 as float32, rows of ne[0] values, plus one line per
// tensor in DIR/index.tsv (seq, name, op, ne0..ne3): the per-layer comparison with
// `cargo run --release -p llama2 --example dump_tensors` (scripts/compare-dumps.py).
#include "llama.h"
#include "ggml.h"
#include "ggml-backend.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

static void log_cb(enum ggml_log_level level, const char * text, void *) {
    if (level == GGML_LOG_LEVEL_ERROR) {
        fputs(text, stderr);
    }
}

struct dump_state {
    std::string dir;
    FILE * index = nullptr;
    int seq = 0;
};

// Reads element (i0, i1, i2, i3) of a host f32/f16 tensor through its strides.
static float element(const ggml_tensor * t, int64_t i0, int64_t i1, int64_t i2, int64_t i3) {
    const char * p = (const char *) t->data + i0 * t->nb[0] + i1 * t->nb[1] + i2 * t->nb[2] + i3 * t->nb[3];
    return t->type == GGML_TYPE_F32 ? *(const float *) p : ggml_fp16_to_fp32(*(const ggml_fp16_t *) p);
}

static bool dump_cb(ggml_tensor * t, bool ask, void * user) {
    auto * st = (dump_state *) user;
    if (t->type != GGML_TYPE_F32 && t->type != GGML_TYPE_F16) return ask ? false : true;
    if (ask) return true;
    if (!t->buffer || !ggml_backend_buffer_is_host(t->buffer)) return true;
    char path[4096];
    snprintf(path, sizeof path, "%s/%04d-%s.f32", st->dir.c_str(), st->seq, t->name);
    FILE * f = fopen(path, "wb");
    if (!f) { fprintf(stderr, "cannot write %s\n", path); exit(1); }
    std::vector<float> row(t->ne[0]);
    for (int64_t i3 = 0; i3 < t->ne[3]; i3++)
        for (int64_t i2 = 0; i2 < t->ne[2]; i2++)
            for (int64_t i1 = 0; i1 < t->ne[1]; i1++) {
                for (int64_t i0 = 0; i0 < t->ne[0]; i0++) row[i0] = element(t, i0, i1, i2, i3);
                fwrite(row.data(), sizeof(float), row.size(), f);
            }
    fclose(f);
    fprintf(st->index, "%d\t%s\t%s\t%lld\t%lld\t%lld\t%lld\n", st->seq, t->name, ggml_op_desc(t),
            (long long) t->ne[0], (long long) t->ne[1], (long long) t->ne[2], (long long) t->ne[3]);
    st->seq++;
    return true;
}

int main(int argc, char ** argv) {
    std::string model_path, ids_arg, out_path;
    int n_threads = 1;
    std::string kv_type = "f32";
    std::string flash_attn = "off";
    bool no_repack = false;
    std::string dump_dir;
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        auto next = [&]() -> std::string {
            if (i + 1 >= argc) { fprintf(stderr, "missing value for %s\n", a.c_str()); exit(2); }
            return argv[++i];
        };
        if (a == "-m" || a == "--model") model_path = next();
        else if (a == "--ids") ids_arg = next();
        else if (a == "--out") out_path = next();
        else if (a == "-t" || a == "--threads") n_threads = std::atoi(next().c_str());
        else if (a == "--kv-type") kv_type = next();
        else if (a == "--flash-attn") flash_attn = next();
        else if (a == "--no-repack") no_repack = true;
        else if (a == "--dump") dump_dir = next();
        else { fprintf(stderr, "unknown argument: %s\n", a.c_str()); return 2; }
    }
    if (model_path.empty() || ids_arg.empty() || out_path.empty() || (kv_type != "f32" && kv_type != "f16") ||
        (flash_attn != "auto" && flash_attn != "on" && flash_attn != "off")) {
        fprintf(stderr, "usage: %s -m MODEL.gguf --ids 1,2,3 --out LOGITS.f32 [--threads 1] [--kv-type f32|f16]\n"
                        "          [--flash-attn auto|on|off] [--no-repack] [--dump DIR]\n", argv[0]);
        return 2;
    }
    std::vector<llama_token> ids;
    {
        std::stringstream ss(ids_arg);
        std::string tok;
        while (std::getline(ss, tok, ',')) ids.push_back((llama_token) std::atoi(tok.c_str()));
    }
    const int n = (int) ids.size();
    if (n == 0) { fprintf(stderr, "no ids\n"); return 2; }

    llama_log_set(log_cb, nullptr);
    llama_backend_init();
    llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers = 0;
    if (no_repack) mparams.use_extra_bufts = false;
    llama_model * model = llama_model_load_from_file(model_path.c_str(), mparams);
    if (!model) { fprintf(stderr, "error: unable to load model %s\n", model_path.c_str()); return 1; }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);

    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = n + 8;
    cparams.n_batch = n;
    cparams.n_ubatch = n;
    cparams.n_threads = n_threads;
    cparams.n_threads_batch = n_threads;
    cparams.no_perf = true;
    cparams.type_k = kv_type == "f32" ? GGML_TYPE_F32 : GGML_TYPE_F16;
    cparams.type_v = cparams.type_k;
    cparams.flash_attn_type = flash_attn == "on" ? LLAMA_FLASH_ATTN_TYPE_ENABLED
                            : flash_attn == "off" ? LLAMA_FLASH_ATTN_TYPE_DISABLED : LLAMA_FLASH_ATTN_TYPE_AUTO;
    dump_state dump;
    if (!dump_dir.empty()) {
        dump.dir = dump_dir;
        std::error_code ec;
        std::filesystem::create_directories(dump_dir, ec);
        dump.index = fopen((dump_dir + "/index.tsv").c_str(), "w");
        if (!dump.index) { fprintf(stderr, "cannot write %s/index.tsv\n", dump_dir.c_str()); return 1; }
        cparams.cb_eval = dump_cb;
        cparams.cb_eval_user_data = &dump;
    }
    llama_context * ctx = llama_init_from_model(model, cparams);
    if (!ctx) { fprintf(stderr, "error: failed to create context\n"); return 1; }

    llama_batch batch = llama_batch_init(n, 0, 1);
    for (int i = 0; i < n; i++) {
        batch.token[i] = ids[i];
        batch.pos[i] = i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = 1;
    }
    batch.n_tokens = n;
    int rc = llama_decode(ctx, batch);
    if (rc != 0) { fprintf(stderr, "error: llama_decode returned %d\n", rc); return 1; }

    FILE * f = fopen(out_path.c_str(), "wb");
    if (!f) { fprintf(stderr, "cannot write %s\n", out_path.c_str()); return 1; }
    for (int i = 0; i < n; i++) {
        const float * logits = llama_get_logits_ith(ctx, i);
        if (!logits) { fprintf(stderr, "error: no logits for %d\n", i); return 1; }
        fwrite(logits, sizeof(float), (size_t) n_vocab, f);
    }
    fclose(f);
    if (dump.index) fclose(dump.index);
    printf("{\"n_tokens\":%d,\"n_vocab\":%d,\"kv_type\":\"%s\",\"flash_attn\":\"%s\"}\n", n, n_vocab,
           kv_type.c_str(), flash_attn.c_str());

    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
