// Reading the admin API. A failure is a value (an explanation to show), never an exception
// that would leave half a page behind.

/**
 * GET a JSON document from the admin server that served this page.
 * Resolves to {ok: true, data} or {ok: false, message, status (absent when nothing answered)}.
 */
export async function getJson(path) {
  let response;
  try {
    response = await fetch(path, { headers: { Accept: "application/json" }, cache: "no-store" });
  } catch {
    return { ok: false, down: true, message: `The control plane is not answering (${path}).` };
  }
  const text = await response.text().catch(() => "");
  let data = null;
  try {
    data = JSON.parse(text);
  } catch {
    data = null;
  }
  if (!response.ok) {
    // Our API explains an error as {"error": ...} or as a line of plain text.
    const reason =
      data && typeof data.error === "string"
        ? data.error
        : data === null
          ? text.split("\n")[0].slice(0, 200)
          : "";
    const detail = reason ? `: ${reason}` : "";
    const what =
      response.status === 404
        ? `This control plane does not serve ${path.split("?")[0]}`
        : `${path.split("?")[0]} answered ${response.status}${detail}`;
    return { ok: false, status: response.status, message: what };
  }
  if (data === null || typeof data !== "object") {
    return { ok: false, message: `${path.split("?")[0]} did not answer JSON.` };
  }
  return { ok: true, data };
}

/** The list at data[key], or [] when the document has none. */
export function listOf(data, key) {
  const value = data ? data[key] : undefined;
  return Array.isArray(value) ? value : [];
}
