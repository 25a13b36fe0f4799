import { HubError } from "./errors.js";

export interface UploadOptions {
  name: string;
  /** Called with the fraction sent, 0 to 1. */
  onProgress?: (fraction: number) => void;
  signal?: AbortSignal;
}

const UPLOAD_TIMEOUT_MS = 10 * 60 * 1000; // 20 MiB at 300 kbit/s

// An upload with progress: XMLHttpRequest where there is one (browsers, React Native),
// fetch with a counting stream elsewhere (Node).
export async function postFile(
  url: string,
  headers: Record<string, string>,
  file: Blob | ArrayBuffer | Uint8Array,
  options: UploadOptions,
): Promise<{ status: number; body: unknown }> {
  const total = file instanceof Blob ? file.size : file.byteLength;
  if (typeof XMLHttpRequest !== "undefined") {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", url);
      xhr.timeout = UPLOAD_TIMEOUT_MS;
      xhr.ontimeout = () => reject(new HubError("timeout", "the upload took too long"));
      for (const [name, value] of Object.entries(headers)) xhr.setRequestHeader(name, value);
      xhr.upload.onprogress = (event) => options.onProgress?.(event.lengthComputable ? event.loaded / event.total : 0);
      xhr.onload = () => resolve({ status: xhr.status, body: parse(xhr.responseText) });
      xhr.onerror = () => reject(new HubError("disconnected", "the upload failed"));
      xhr.onabort = () => reject(new HubError("disconnected", "the upload was cancelled"));
      options.signal?.addEventListener("abort", () => xhr.abort());
      xhr.send(file instanceof Uint8Array ? new Blob([file as Uint8Array<ArrayBuffer>]) : file);
    });
  }
  const bytes = file instanceof Blob ? new Uint8Array(await file.arrayBuffer()) : new Uint8Array(file);
  const CHUNK = 64 * 1024;
  let sent = 0;
  const body = new ReadableStream<Uint8Array>({
    pull(controller) {
      if (sent >= total) {
        controller.close();
        return;
      }
      const piece = bytes.subarray(sent, Math.min(total, sent + CHUNK));
      sent += piece.byteLength;
      controller.enqueue(piece);
      options.onProgress?.(sent / total);
    },
  });
  let response: Response;
  try {
    response = await fetch(url, {
      method: "POST",
      headers: { ...headers, "content-length": String(total) },
      body,
      duplex: "half",
      signal: AbortSignal.any([AbortSignal.timeout(UPLOAD_TIMEOUT_MS), ...(options.signal ? [options.signal] : [])]),
    } as RequestInit);
  } catch (error) {
    const aborted = options.signal?.aborted;
    throw new HubError("disconnected", aborted ? "the upload was cancelled" : `the upload failed: ${String(error)}`);
  }
  return { status: response.status, body: parse(await response.text()) };
}

function parse(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return {};
  }
}
