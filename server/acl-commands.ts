import { type AclRule, formatRule } from "./acl/rules.js";
import { call, type OutputOptions, table } from "./people-commands.js";

/** What `muster acl ...` prints: a table, or the API's JSON with --json. */

interface TokenView {
  readonly accessor: string;
  readonly description: string;
  readonly policies: readonly string[];
}

interface PolicyView {
  readonly name: string;
  readonly description: string;
  readonly rules: readonly AclRule[];
}

const tokenRow = (token: TokenView) => [
  token.accessor,
  token.policies.join(",") || "-",
  token.description || "-",
];

const policyRow = (policy: PolicyView) => [
  policy.name,
  policy.rules.map(formatRule).join(" ") || "-",
  policy.description || "-",
];

function tokens(options: OutputOptions, body: Record<string, unknown>, list: TokenView[]): string {
  if (options.json) return JSON.stringify(body, null, 2);
  return table(["ACCESSOR", "POLICIES", "DESCRIPTION"], list.map(tokenRow));
}

function policies(
  options: OutputOptions,
  body: Record<string, unknown>,
  list: PolicyView[],
): string {
  if (options.json) return JSON.stringify(body, null, 2);
  return table(["POLICY", "RULES", "DESCRIPTION"], list.map(policyRow));
}

const policyPath = (name: string) => `/v1/acl/policies/${encodeURIComponent(name)}`;
const tokenPath = (accessor: string) => `/v1/acl/tokens/${encodeURIComponent(accessor)}`;

export async function setPolicy(
  options: OutputOptions,
  name: string,
  rules: readonly AclRule[],
  description: string | undefined,
): Promise<string> {
  const body = await call(options, "PUT", policyPath(name), {
    rules,
    ...(description === undefined ? {} : { description }),
  });
  return policies(options, body, [body as unknown as PolicyView]);
}

export async function listPolicies(options: OutputOptions): Promise<string> {
  const body = await call(options, "GET", "/v1/acl/policies");
  return policies(options, body, body.policies as PolicyView[]);
}

export async function readPolicy(options: OutputOptions, name: string): Promise<string> {
  const body = await call(options, "GET", policyPath(name));
  return policies(options, body, [body as unknown as PolicyView]);
}

export async function deletePolicy(options: OutputOptions, name: string): Promise<string> {
  const body = await call(options, "DELETE", policyPath(name));
  return options.json ? JSON.stringify(body, null, 2) : `deleted policy ${name}`;
}

export async function createToken(
  options: OutputOptions,
  policyNames: readonly string[],
  description: string | undefined,
): Promise<string> {
  const body = await call(options, "POST", "/v1/acl/tokens", {
    policies: policyNames,
    ...(description === undefined ? {} : { description }),
  });
  if (options.json) return JSON.stringify(body, null, 2);
  const token = body as unknown as TokenView & { secret: string };
  return `${tokens(options, body, [token])}\nsecret: ${token.secret}\n(shown this once: keep it)`;
}

export async function updateToken(
  options: OutputOptions,
  accessor: string,
  policyNames: readonly string[],
  description: string | undefined,
): Promise<string> {
  const body = await call(options, "PUT", tokenPath(accessor), {
    policies: policyNames,
    ...(description === undefined ? {} : { description }),
  });
  return tokens(options, body, [body as unknown as TokenView]);
}

export async function listTokens(options: OutputOptions): Promise<string> {
  const body = await call(options, "GET", "/v1/acl/tokens");
  return tokens(options, body, body.tokens as TokenView[]);
}

/** `accessor` "self": the token the command runs with. */
export async function readToken(options: OutputOptions, accessor: string): Promise<string> {
  const body = await call(options, "GET", tokenPath(accessor));
  return tokens(options, body, [body as unknown as TokenView]);
}

export async function deleteToken(options: OutputOptions, accessor: string): Promise<string> {
  const body = await call(options, "DELETE", tokenPath(accessor));
  return options.json ? JSON.stringify(body, null, 2) : `deleted token ${accessor}`;
}
