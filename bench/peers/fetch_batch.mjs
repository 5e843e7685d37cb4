// The same batch as the node runs, made with Node.js fetch: N streamed
// Ollama /api/chat calls, C loops taking the next index, each reply read to
// its final NDJSON object. Prints items per second.
//
// usage: node fetch_batch.mjs BASE_URL N C [MODEL]
const [base, nText, cText, model = "test-model"] = process.argv.slice(2);
const n = Number(nText);
const c = Number(cText);
const url = `${base}/api/chat`;
const results = new Array(n).fill(null);
let next = 0;

async function one(i) {
  const body = JSON.stringify({
    model, stream: true, options: { num_predict: 16 },
    messages: [{ role: "user", content: `prompt number ${i}` }],
  });
  const resp = await fetch(url, {
    method: "POST", body, headers: { "content-type": "application/json" },
  });
  if (resp.status !== 200) {
    await resp.arrayBuffer();
    return;
  }
  const decoder = new TextDecoder();
  let buffer = "";
  let text = "";
  for await (const part of resp.body) {
    buffer += decoder.decode(part, { stream: true });
    let nl;
    while ((nl = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 1);
      if (!line.trim()) continue;
      const chunk = JSON.parse(line);
      text += chunk.message?.content ?? "";
      if (chunk.done) {
        results[i] = [text, chunk.eval_count ?? 0];
      }
    }
  }
}

async function loop() {
  while (next < n) {
    await one(next++);
  }
}

const start = performance.now();
await Promise.all(Array.from({ length: c }, loop));
const secs = (performance.now() - start) / 1000;
const ok = results.filter((r) => r !== null).length;
console.log(`fetch items=${n} done=${ok} wall_s=${secs.toFixed(3)} items_per_s=${Math.round(n / secs)}`);
