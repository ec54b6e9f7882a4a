// The playground's logic: keep a chat, POST it to /v1/chat/completions with "stream": true,
// and render the server-sent events as they arrive (fetch + ReadableStream + a small SSE parser).
// No framework and no build step; the API key stays in sessionStorage (this tab only).
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "llmfs.apiKey";
const messages = [];  // the conversation so far: {role, content}
let controller = null;  // the AbortController of the stream in flight

// --- server-sent events -------------------------------------------------------------------
// Feed text in as it arrives; each complete event (a blank line ends it) yields the data of its
// "data:" lines joined by "\n". Comments (":") and other fields (event:, id:) are ignored.
function sseParser(onData) {
  let buffer = "";
  return (text) => {
    buffer += text.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) !== -1) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(line.startsWith("data: ") ? 6 : 5));
      if (data.length) onData(data.join("\n"));
    }
  };
}

// The message of an OpenAI-shaped error body {"error": {"message", ...}}, or a fallback.
async function errorMessage(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body && body.error && body.error.message) return body.error.message;
    if (body && body.detail) return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch (_) { /* not JSON */ }
  return `${response.status} ${response.statusText || ""} ${text.slice(0, 200)}`.trim();
}

// --- the page -------------------------------------------------------------------------------
function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = !text;
}

function addMessage(role, content) {
  const div = document.createElement("div");
  div.className = `message ${role}`;
  const body = document.createElement("span");
  body.className = "content";
  body.textContent = content;
  div.appendChild(body);
  $("transcript").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function modelName() {
  const shown = $("model-name");
  if (shown.dataset.id) return shown.dataset.id;
  try {
    const response = await fetch("v1/models", { headers: headers() });
    if (!response.ok) return undefined;
    const body = await response.json();
    const id = body.data && body.data[0] && body.data[0].id;
    if (id) { shown.dataset.id = id; shown.textContent = id; }
    return id;
  } catch (_) {
    return undefined;
  }
}

async function send(text) {
  showError("");
  const system = $("system").value.trim();
  messages.push({ role: "user", content: text });
  const asked = addMessage("user", text);
  const bubble = addMessage("assistant", "");
  bubble.classList.add("streaming");
  const content = bubble.querySelector(".content");
  setBusy(true);
  controller = new AbortController();
  let reply = "";
  let finish = null;
  let usage = null;
  try {
    const body = {
      messages: (system ? [{ role: "system", content: system }] : []).concat(messages),
      stream: true,
      stream_options: { include_usage: true },
      temperature: Number($("temperature").value),
      max_tokens: Number($("max-tokens").value),
    };
    const model = await modelName();
    if (model) body.model = model;
    const response = await fetch("v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    let done = false;
    const feed = sseParser((data) => {
      if (data === "[DONE]") { done = true; return; }
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message || JSON.stringify(chunk.error));
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        const delta = choice.delta && choice.delta.content;
        if (delta) { reply += delta; content.textContent = reply; }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();  // {stream: true} keeps a character split across reads whole
    while (!done) {
      const { value, done: ended } = await reader.read();
      if (ended) break;
      feed(decoder.decode(value, { stream: true }));
    }
    feed(decoder.decode());
    if (done) reader.cancel().catch(() => {});
    else throw new Error("the stream ended before data: [DONE]");
  } catch (err) {
    if (err.name === "AbortError") finish = "stopped";
    else showError(err.message || String(err));
  } finally {
    controller = null;
    bubble.classList.remove("streaming");
    if (reply) {
      messages.push({ role: "assistant", content: reply });
      const meta = document.createElement("span");
      meta.className = "meta";
      meta.textContent = [finish, usage && `${usage.completion_tokens} tokens`].filter(Boolean).join(" · ");
      bubble.appendChild(meta);
    } else {  // nothing came back: undo the turn, and keep the text to send again
      bubble.remove();
      asked.remove();
      messages.pop();
      if (!$("message").value) $("message").value = text;
    }
    setBusy(false);
  }
}

function init() {
  const key = $("api-key");
  key.value = sessionStorage.getItem(KEY_STORAGE) || "";
  key.addEventListener("input", () => {
    sessionStorage.setItem(KEY_STORAGE, key.value);
    delete $("model-name").dataset.id;
  });
  $("temperature").addEventListener("input", (e) => { $("temperature-value").textContent = e.target.value; });
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("message").value;
    if (!text.trim() || controller) return;
    $("message").value = "";
    send(text);
  });
  $("message").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
  });
  $("stop").addEventListener("click", () => { if (controller) controller.abort(); });
  $("clear").addEventListener("click", () => {
    if (controller) controller.abort();
    messages.length = 0;
    $("transcript").replaceChildren();
    showError("");
  });
}

document.addEventListener("DOMContentLoaded", init);
