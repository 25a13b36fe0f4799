import type { ErrorCode } from "./protocol.js";

/** A code of the hub's, or one of the client's own: no answer in time, or no connection. */
export type HubErrorCode = ErrorCode | "timeout" | "disconnected";

// Sending again is safe and may succeed: the hub was busy or away, or the answer was lost.
const RETRYABLE: ReadonlySet<HubErrorCode> = new Set<HubErrorCode>([
  "rate_limited",
  "unavailable",
  "internal",
  "timeout",
  "disconnected",
]);

/** The one error of the SDK: the hub's code and message, and whether to try again. */
export class HubError extends Error {
  readonly code: HubErrorCode;
  readonly retryable: boolean;
  /** The HTTP status, for errors of HTTP routes (uploads). */
  readonly status?: number;

  constructor(code: HubErrorCode, message: string, status?: number) {
    super(message);
    this.name = "HubError";
    this.code = code;
    this.retryable = RETRYABLE.has(code);
    if (status !== undefined) this.status = status;
  }

  static from(error: unknown): HubError {
    if (error instanceof HubError) return error;
    const value = error as { code?: unknown; message?: unknown } | null;
    const code = typeof value?.code === "string" ? (value.code as HubErrorCode) : "internal";
    const message = typeof value?.message === "string" ? value.message : String(error);
    return new HubError(code, message);
  }

  toJSON(): { code: HubErrorCode; message: string; retryable: boolean } {
    return { code: this.code, message: this.message, retryable: this.retryable };
  }
}
