// Receives platescore webhooks: verifies each one (Standard Webhooks, the npm
// `standardwebhooks` package), stores the job's result once, and answers 2xx quickly.
//
//   PLATESCORE_WEBHOOK_SECRET=whsec_... node dist/receiver.js --port 8001 --store results.jsonl
//
// The secret signs what this URL receives: the partner-wide secret of GET /webhook-secret
// for per-job webhook_urls, or the endpoint's own from POST /webhooks; several may be given,
// separated by spaces. Answers: 204 once a message is stored (or was already: retries and
// redeliveries repeat the webhook-id), 204 for unknown event types (e.g. webhook.test), 401
// when the signature or timestamp does not verify, 404 elsewhere, 413 over 1 MiB.
//
// The store is a JSON-lines file, one line per new webhook-id, to keep the sample free of a
// database; use yours, with unique keys on webhook_id and job_id.

import { appendFileSync, existsSync, readFileSync } from "node:fs";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import { parseArgs } from "node:util";
import { Webhook } from "standardwebhooks";
import { JobFailedEventFromJSON, JobSucceededEventFromJSON, type JobFailedEvent, type JobSucceededEvent } from "./client";

const MAX_BODY = 1 << 20;
const SIGNATURE_HEADERS = ["webhook-id", "webhook-timestamp", "webhook-signature"] as const;

/** One line of the store: a verified job message, and whether it stored the job's result. */
export interface StoredMessage {
  webhook_id: string;
  job_id: string;
  type: string;
  received_at: string;
  stored: boolean; // false: the job's result was already stored (another message)
  client_reference?: string | null;
  status?: string;
  result?: unknown; // the ScoreResult as platescore sent it (snake_case JSON)
  error?: unknown;
}

type Outcome = "stored" | "duplicate" | "already_stored";

class JsonlStore {
  private readonly webhookIds = new Set<string>();
  private readonly jobIds = new Set<string>();

  constructor(private readonly path: string) {
    if (!existsSync(path)) return;
    for (const line of readFileSync(path, "utf8").split("\n")) {
      if (!line) continue;
      const message = JSON.parse(line) as StoredMessage;
      this.webhookIds.add(message.webhook_id);
      if (message.stored) this.jobIds.add(message.job_id);
    }
  }

  /** Records a verified message; a repeated webhook-id, or a job already stored, stores nothing. */
  save(webhookId: string, event: JobSucceededEvent | JobFailedEvent, body: Record<string, unknown>): Outcome {
    if (this.webhookIds.has(webhookId)) return "duplicate";
    const stored = !this.jobIds.has(event.jobId);
    const message: StoredMessage = {
      webhook_id: webhookId,
      job_id: event.jobId,
      type: event.type,
      received_at: new Date().toISOString(),
      stored,
      ...(stored && {
        client_reference: event.request.clientReference ?? null,
        status: event.status,
        result: body.result,
        error: body.error,
      }),
    };
    // Synchronous, so it is on disk before the 2xx and two requests cannot interleave.
    appendFileSync(this.path, JSON.stringify(message) + "\n");
    this.webhookIds.add(webhookId);
    if (stored) this.jobIds.add(event.jobId);
    return stored ? "stored" : "already_stored";
  }
}

/** True if any secret verifies the signature, with the timestamp within 5 minutes. */
function verify(verifiers: Webhook[], body: Buffer, req: IncomingMessage): boolean {
  const headers: Record<string, string> = {};
  for (const name of SIGNATURE_HEADERS) {
    const value = req.headers[name];
    if (typeof value === "string") headers[name] = value;
  }
  return verifiers.some((verifier) => {
    try {
      verifier.verify(body, headers, { jsonParse: false });
      return true;
    } catch {
      return false; // WebhookVerificationError, or a malformed header
    }
  });
}

function parseEvent(payload: unknown): JobSucceededEvent | JobFailedEvent | null {
  const type = (payload as { type?: unknown } | null)?.type;
  if (type === "job.succeeded") return JobSucceededEventFromJSON(payload);
  if (type === "job.failed") return JobFailedEventFromJSON(payload);
  return null;
}

function log(message: string): void {
  process.stderr.write(`${new Date().toISOString()} receiver ${message}\n`);
}

function main(): void {
  const { values } = parseArgs({
    options: {
      host: { type: "string", default: "127.0.0.1" },
      port: { type: "string", default: process.env.PORT ?? "8001" },
      path: { type: "string", default: "/hooks/platescore" },
      store: { type: "string", default: "results.jsonl" },
    },
  });
  const secrets = (process.env.PLATESCORE_WEBHOOK_SECRET ?? "").split(" ").filter(Boolean);
  if (secrets.length === 0) throw new Error("set PLATESCORE_WEBHOOK_SECRET (whsec_...)");
  const verifiers = secrets.map((secret) => new Webhook(secret));
  const store = new JsonlStore(values.store);

  const reply = (res: ServerResponse, status: number, message = ""): void => {
    res.writeHead(status, { "content-type": "text/plain; charset=utf-8" }).end(message);
  };

  const server = createServer((req, res) => {
    if (req.method !== "POST" || req.url !== values.path) return reply(res, 404, "not found");
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size <= MAX_BODY) chunks.push(chunk);
    });
    req.on("end", () => {
      if (size > MAX_BODY) return reply(res, 413, "too large");
      const body = Buffer.concat(chunks); // the raw bytes: the signature covers exactly these
      const webhookId = String(req.headers["webhook-id"] ?? "");
      if (!verify(verifiers, body, req)) {
        log(`rejected ${JSON.stringify(webhookId)}: signature or timestamp does not verify`);
        return reply(res, 401, "invalid signature");
      }
      let payload: unknown;
      let event: JobSucceededEvent | JobFailedEvent | null;
      try {
        payload = JSON.parse(body.toString("utf8"));
        event = parseEvent(payload);
      } catch (err) {
        // Verified but not what this code expects: a 5xx makes platescore retry, after a fix.
        log(`cannot parse ${webhookId}: ${String(err)}`);
        return reply(res, 500, "cannot parse event");
      }
      if (event === null) {
        log(`ignored ${String((payload as { type?: unknown } | null)?.type)} (${webhookId})`); // e.g. webhook.test
        return reply(res, 204);
      }
      const outcome = store.save(webhookId, event, payload as Record<string, unknown>);
      log(`${outcome} ${event.type} job ${event.jobId} (${webhookId})`);
      reply(res, 204); // slow work belongs after the reply, e.g. in a queue
    });
  });
  server.listen(Number(values.port), values.host, () => {
    log(`listening on http://${values.host}:${values.port}${values.path}`);
  });
  process.on("SIGTERM", () => process.exit(0)); // writes are synchronous: nothing is half-done
}

main();
