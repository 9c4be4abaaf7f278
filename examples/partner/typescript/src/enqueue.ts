// Enqueues photos with the generated typescript-fetch client, each under a client_reference
// of yours.
//
//   PLATESCORE_URL=https://platescore.example.com PLATESCORE_API_KEY=psk_... \
//     node dist/enqueue.js --webhook-url https://you.example.com/hooks/platescore \
//                          --ref-prefix meal-2026-11-30- lunch.jpg dinner.jpg
//
// Prints one JSON line per job: {"client_reference", "job_id", "replayed"}. The same
// client_reference with the same request returns the same job (Idempotent-Replayed: true),
// so a request that timed out or failed is simply sent again; with a different request it
// is refused (409 client_reference_reused).

import { readFileSync } from "node:fs";
import { basename, extname } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { parseArgs } from "node:util";
import { Configuration, JobsApi, ResponseError, type EnqueueUploadRequest, type Job } from "./client";

const MIME_TYPES: Record<string, string> = {
  ".jpg": "image/jpeg",
  ".jpeg": "image/jpeg",
  ".png": "image/png",
  ".webp": "image/webp",
};
const RETRIABLE = new Set([429, 500, 502, 503, 504]);

/** Enqueues one photo, retrying transient failures; returns the job and whether it was replayed. */
async function enqueuePhoto(api: JobsApi, request: EnqueueUploadRequest, attempts = 5): Promise<[Job, boolean]> {
  let failure = "";
  for (let attempt = 1; attempt <= attempts; attempt++) {
    try {
      const response = await api.enqueueUploadRaw(request);
      return [await response.value(), response.raw.headers.get("idempotent-replayed") === "true"];
    } catch (err) {
      if (err instanceof ResponseError) {
        // Problem details (RFC 9457): a stable `code` and a `detail` for people.
        const problem = await err.response.text();
        if (!RETRIABLE.has(err.response.status)) {
          throw new Error(`${request.clientReference}: ${err.response.status} ${problem}`);
        }
        failure = `HTTP ${err.response.status}`;
      } else {
        failure = String(err); // fetch failed: did it arrive? The same reference makes asking again safe.
      }
    }
    if (attempt < attempts) await sleep(Math.min(2 ** attempt, 30) * 1000);
  }
  throw new Error(`${request.clientReference}: gave up after ${attempts} attempts (${failure})`);
}

async function main(): Promise<void> {
  const { values, positionals: images } = parseArgs({
    allowPositionals: true,
    options: {
      "webhook-url": { type: "string" },
      "ref-prefix": { type: "string", default: "photo-" },
      start: { type: "string", default: "0" },
      count: { type: "string" },
      metadata: { type: "string" },
    },
  });
  if (images.length === 0) throw new Error("usage: enqueue.js [options] IMAGE...");
  const { PLATESCORE_URL, PLATESCORE_API_KEY } = process.env;
  if (!PLATESCORE_URL || !PLATESCORE_API_KEY) throw new Error("set PLATESCORE_URL and PLATESCORE_API_KEY");

  const api = new JobsApi(new Configuration({ basePath: PLATESCORE_URL, accessToken: PLATESCORE_API_KEY }));
  const count = Number(values.count ?? images.length);
  const metadata = values.metadata === undefined ? undefined : (JSON.parse(values.metadata) as Record<string, unknown>);
  for (let n = 0; n < count; n++) {
    const path = images[n % images.length];
    const clientReference = `${values["ref-prefix"]}${String(Number(values.start) + n).padStart(4, "0")}`;
    const type = MIME_TYPES[extname(path).toLowerCase()] ?? "application/octet-stream";
    const [job, replayed] = await enqueuePhoto(api, {
      image: new File([readFileSync(path)], basename(path), { type }),
      clientReference,
      webhookUrl: values["webhook-url"],
      metadata,
    });
    console.log(JSON.stringify({ client_reference: clientReference, job_id: job.jobId, replayed }));
  }
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
