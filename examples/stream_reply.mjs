// Send a message to chordline's HTTP API and print the reply as the agent writes it.
//   node examples/stream_reply.mjs http://127.0.0.1:8000 "$CHORDLINE_API_KEY" c1 "Does it have a REST API?"
// Runs as it is in Node 18+ and, without the process lines, in a browser (fetch and streams).
const [base, key, conversation, message] = process.argv.slice(2);
const auth = { Authorization: `Bearer ${key}` };

const created = await fetch(`${base}/v1/conversations/${conversation}/turns`, {
  method: "POST",
  headers: { ...auth, "Content-Type": "application/json", "Idempotency-Key": crypto.randomUUID() },
  body: JSON.stringify({ message }),
});
if (created.status !== 202) {
  const problem = await created.json(); // application/problem+json
  throw new Error(`${problem.status} ${problem.detail}`);
}
const { turn_id } = await created.json();

// Server-sent events over fetch (EventSource cannot send an Authorization header).
async function* serverSentEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event = { type: "message", id: null, data: "" };
      for (const line of block.split("\n")) {
        const colon = line.indexOf(":");
        if (colon <= 0) continue; // ": heartbeat" comments, "retry" hints
        const field = line.slice(0, colon);
        const value = line.slice(colon + 1).trimStart();
        if (field === "event") event.type = value;
        else if (field === "id") event.id = value;
        else if (field === "data") event.data += value;
      }
      if (event.data) yield { ...event, data: JSON.parse(event.data) };
    }
  }
}

let reply = "";
let lastEventId = null; // send it back as Last-Event-ID to resume after a dropped connection
const stream = await fetch(`${base}/v1/turns/${turn_id}/stream`, { headers: auth });
for await (const event of serverSentEvents(stream)) {
  lastEventId = event.id ?? lastEventId;
  if (event.type === "token") {
    reply += event.data.text;
    process.stderr.write(event.data.text);
  } else if (event.type === "restart") {
    reply = ""; // the agent ran again: start over
  } else if (event.type === "end") {
    console.log(JSON.stringify({ turn_id, reply, end: event.data, lastEventId }));
  }
}
