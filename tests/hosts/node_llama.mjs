// A JavaScript program on node-llama-cpp's public API, as a user would write it (run by
// tests/node_llama.rs, with and without GGML_BACKEND_PATH=libattnrot.so).
//
// usage: node node_llama.mjs <npm install dir> <model.gguf> <K type> <V type> <text file>
//                            <positions> <logits out file>
// 1. getLlama: the prebuilt binaries only (@node-llama-cpp/linux-x64), never a download or a
//    build; all of llama.cpp's log (debug level) goes to stderr, one "[level] line" each.
// 2. a context with experimentalKvCacheKeyType / experimentalKvCacheValueType (d.ts:
//    evaluator/LlamaContext/types.d.ts), one thread;
// 3. greedy completion (temperature 0, 64 tokens) of a fixed prompt;
// 4. the first <positions> tokens of the text, teacher-forced (controlledEvaluate), the raw
//    logits of every position written as float32 [positions][n_vocab] to <logits out file>.
// stdout: one JSON line with the text and what the context reports.
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const [installDir, modelPath, kType, vType, textFile, positionsArg, logitsOut] = process.argv.slice(2);
const positions = Number(positionsArg);
const require = createRequire(join(installDir, "package.json"));
const { getLlama, LlamaLogLevel, LlamaCompletion } = await import(
    pathToFileURL(require.resolve("node-llama-cpp")).href
);

const llama = await getLlama({
    gpu: false,
    build: "never",
    skipDownload: true,
    usePrebuiltBinaries: true,
    progressLogs: false,
    maxThreads: 1,
    logLevel: LlamaLogLevel.debug,
    logger: (level, message) => process.stderr.write(`[${level}] ${message}\n`),
});
const model = await llama.loadModel({ modelPath });
const context = await model.createContext({
    contextSize: 512,
    threads: 1,
    sequences: 1,
    experimentalKvCacheKeyType: kType,
    experimentalKvCacheValueType: vType,
});
const sequence = context.getSequence();

const completion = new LlamaCompletion({ contextSequence: sequence });
const text = await completion.generateCompletion("The capital of France is", {
    maxTokens: 64,
    temperature: 0,
});

await sequence.clearHistory();
const tokens = model.tokenize(readFileSync(textFile, "utf8")).slice(0, positions);
if (tokens.length !== positions) throw new Error(`text has only ${tokens.length} tokens`);
let nVocab = 0; // from the first result: node-llama-cpp returns one logit per vocabulary entry
let logits = null;
let seen = 0;
await sequence.controlledEvaluate(
    tokens.map((t) => [t, { generateNext: { logits: true } }]),
    {
        onTokenResult(i, result) {
            if (logits === null) {
                nVocab = result.next.logits.size;
                logits = new Float32Array(positions * nVocab);
            }
            if (result.next.logits.size !== nVocab) throw new Error("logits of varying size");
            const row = logits.subarray(i * nVocab, (i + 1) * nVocab);
            for (const [token, value] of result.next.logits) row[token] = value;
            seen++;
        },
    },
);
if (seen !== positions) throw new Error(`logits for ${seen} of ${positions} positions`);
writeFileSync(logitsOut, logits);

console.log(JSON.stringify({
    text,
    buildType: llama.buildType,
    kvCacheKeyType: context.kvCacheKeyType,
    kvCacheValueType: context.kvCacheValueType,
    nVocab,
    positions,
}));
await context.dispose();
await model.dispose();
await llama.dispose();
