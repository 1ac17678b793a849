// Talks to the service's OpenAI-compatible API: model list and streamed chat completions.

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

async function errorFrom(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body?.error?.message) message = body.error.message;
  } catch { /* the body was not JSON: keep the status line */ }
  return new ApiError(message, response.status);
}

export async function listModels(baseUrl) {
  const response = await fetch(`${baseUrl}/v1/models`);
  if (!response.ok) throw await errorFrom(response);
  return (await response.json()).data;
}

// Yields each parsed SSE `data:` payload of a streamed chat completion until [DONE].
export async function* streamChat(baseUrl, body, signal) {
  const response = await fetch(`${baseUrl}/v1/chat/completions`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
    signal,
  });
  if (!response.ok) throw await errorFrom(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let boundary;
    while ((boundary = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, boundary);
      buffer = buffer.slice(boundary + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        const payload = JSON.parse(data);
        if (payload.error) throw new ApiError(payload.error.message, 500);
        yield payload;
      }
    }
  }
}
