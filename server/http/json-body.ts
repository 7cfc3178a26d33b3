import { MusterError } from "../errors.js";

/**
 * The first key in `body` that would reach an object's prototype if the body were ever
 * merged into an object: "__proto__", or "constructor" holding an object with a "prototype"
 * key. `field` is its path, as the schema names a bad key. A loop, not recursion: a body
 * may nest thousands deep.
 */
function prototypeKey(body: unknown): { field: string; key: string } | null {
  interface Place {
    readonly value: unknown;
    readonly key: string;
    readonly parent: Place | null;
  }
  const pathOf = (place: Place): string[] => {
    const keys: string[] = [];
    for (let at: Place | null = place; at?.parent != null; at = at.parent) keys.push(at.key);
    return keys.reverse();
  };
  const pending: Place[] = [{ value: body, key: "", parent: null }];
  for (let place = pending.pop(); place !== undefined; place = pending.pop()) {
    if (typeof place.value !== "object" || place.value === null) continue;
    for (const [key, inner] of Object.entries(place.value)) {
      const poisoned =
        key === "__proto__" ||
        (key === "constructor" &&
          typeof inner === "object" &&
          inner !== null &&
          Object.hasOwn(inner, "prototype"));
      if (poisoned) return { field: [...pathOf(place), key].join("."), key };
      pending.push({ value: inner, key, parent: place });
    }
  }
  return null;
}

/**
 * A JSON request body. JSON.parse keeps "__proto__" as a plain key, so such keys can be
 * refused by name here instead of the whole body being called invalid JSON.
 */
export function parseJsonBody(text: string): unknown {
  if (text.length === 0)
    throw new MusterError("MUSTER_ERR_BAD_REQUEST", "body is empty; send a JSON object");
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch (error) {
    throw new MusterError(
      "MUSTER_ERR_BAD_REQUEST",
      `body is not valid JSON: ${(error as Error).message}`,
    );
  }
  // Most bodies (every heartbeat) cannot hold such a key: they skip the walk. A key may be
  // written with escapes, which JSON.parse undoes.
  const suspect =
    text.includes("__proto__") || text.includes("constructor") || text.includes("\\u");
  const found = suspect ? prototypeKey(body) : null;
  if (found !== null)
    throw new MusterError(
      "MUSTER_ERR_BAD_REQUEST",
      `key "${found.key}" is not allowed: it names an object's prototype`,
      found.field,
    );
  return body;
}
