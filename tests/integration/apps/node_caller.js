// A Node.js app that calls another service with the `http` module, which ignores HTTP_PROXY:
// GET /call?url=U fetches U (forwarding x-fault) and answers {status, body} as JSON.
"use strict";
const http = require("http");

const server = http.createServer((request, response) => {
  const url = new URL(request.url, "http://localhost");
  if (url.pathname !== "/call") {
    response.writeHead(200, { "content-type": "application/json" });
    response.end(JSON.stringify({ app: "node", path: request.url }));
    return;
  }
  const headers = {};
  if (request.headers["x-fault"]) headers["x-fault"] = request.headers["x-fault"];
  const call = http.get(url.searchParams.get("url"), { headers }, (answer) => {
    let body = "";
    answer.setEncoding("utf8");
    answer.on("data", (chunk) => (body += chunk));
    answer.on("end", () => {
      response.writeHead(200, { "content-type": "application/json" });
      response.end(JSON.stringify({ status: answer.statusCode, body }));
    });
  });
  call.setTimeout(10000, () => call.destroy(new Error("timed out")));
  call.on("error", (error) => {
    response.writeHead(502, { "content-type": "application/json" });
    response.end(JSON.stringify({ error: String(error) }));
  });
});
server.listen(Number(process.env.PORT), "127.0.0.1");
