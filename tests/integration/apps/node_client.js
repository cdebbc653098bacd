// A Node.js app whose `http` client ignores HTTP_PROXY: it reaches the `web` service through
// its sidecar's upstream local port (PILOTFISH_UPSTREAM_WEB_8080). GET /relay?path=P answers
// with what GET P on web answered (status and JSON body).
"use strict";
const http = require("http");

const [upstreamHost, upstreamPort] = process.env.PILOTFISH_UPSTREAM_WEB_8080.split(":");

http
  .createServer((request, response) => {
    const url = new URL(request.url, "http://localhost");
    if (url.pathname !== "/relay") {
      response.writeHead(200, { "content-type": "application/json" });
      response.end(JSON.stringify({ app: "node" }));
      return;
    }
    const headers = {};
    for (const name of ["x-version"]) {
      if (request.headers[name]) headers[name] = request.headers[name];
    }
    const outgoing = http.get(
      { host: upstreamHost, port: Number(upstreamPort), path: url.searchParams.get("path"), headers },
      (answer) => {
        let body = "";
        answer.on("data", (chunk) => (body += chunk));
        answer.on("end", () => {
          response.writeHead(200, { "content-type": "application/json" });
          response.end(JSON.stringify({ app: "node", status: answer.statusCode, body }));
        });
      },
    );
    outgoing.on("error", (error) => {
      response.writeHead(502, { "content-type": "application/json" });
      response.end(JSON.stringify({ app: "node", error: String(error) }));
    });
  })
  .listen(Number(process.env.PORT), "127.0.0.1");
