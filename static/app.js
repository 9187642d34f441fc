// A first page: the tutorial's behaviour in chat.v1. The full client lands with issue 6.
const $ = (id) => document.getElementById(id);
let socket;
let lastId = null;
let name = localStorage.getItem("chat.name") ?? "";
$("name").value = name;

function show(m) {
  const li = document.createElement("li");
  const time = document.createElement("time");
  time.dateTime = new Date(m.ts).toISOString();
  time.textContent = new Date(m.ts).toLocaleTimeString();
  li.append(time, document.createTextNode(`${m.user}: ${m.message}`)); // text, never HTML
  $("messages").append(li);
  li.scrollIntoView({ block: "end" });
  lastId = m.id;
}

function connect() {
  const url = new URL("/websocket", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  url.searchParams.set("user", name);
  if (lastId) url.searchParams.set("since", lastId);
  socket = new WebSocket(url, "chat.v1");
  socket.onopen = () => {
    $("status").textContent = "Connected";
  };
  socket.onmessage = (e) => {
    const f = JSON.parse(e.data);
    if (f.type === "welcome") f.history.forEach(show);
    else if (f.type === "message") show(f);
    else if (f.type === "error") $("status").textContent = f.message;
  };
  socket.onclose = () => {
    $("status").textContent = "Disconnected, reconnecting…";
    setTimeout(connect, 1000);
  };
}

$("join").onsubmit = (e) => {
  e.preventDefault();
  name = $("name").value.trim();
  localStorage.setItem("chat.name", name);
  $("join").hidden = true;
  $("chat").hidden = false;
  connect();
  $("message").focus();
};

$("send").onsubmit = (e) => {
  e.preventDefault();
  const text = $("message").value;
  if (!text.trim() || socket?.readyState !== WebSocket.OPEN) return;
  socket.send(JSON.stringify({ type: "message", message: text }));
  $("message").value = "";
};
