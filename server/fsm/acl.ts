import { assert } from "../../raft/core/assert.js";
import { type AclPolicy, managementPolicy, managementPolicyName } from "../acl/rules.js";

/** A token as replicated: its secret only as a hash, so no replica or snapshot holds it. */
export interface AclToken {
  readonly accessor: string;
  /** sha256 of the secret, hex; "" for the anonymous token, which no secret names. */
  readonly secretHash: string;
  readonly policies: readonly string[];
  readonly description: string;
  readonly createIndex: number;
  readonly modifyIndex: number;
}

/** The token whose policies apply to requests without a token, DNS queries among them. */
export const anonymousAccessor = "anonymous";

export interface StoredAcl {
  readonly policies: AclPolicy[];
  readonly tokens: AclToken[];
  readonly bootstrapped: boolean;
  readonly index: number;
}

export type AclOutcome =
  | { readonly ok: true; readonly token?: AclToken; readonly policy?: AclPolicy }
  | { readonly ok: false; readonly code: "not-found" | "conflict"; readonly message: string };

function anonymousToken(): AclToken {
  return {
    accessor: anonymousAccessor,
    secretHash: "",
    policies: [],
    description: "requests without a token, and DNS",
    createIndex: 0,
    modifyIndex: 0,
  };
}

/** Tokens and policies: part of the registry's replicated state. */
export class AclTable {
  private policies = new Map<string, AclPolicy>();
  private tokens = new Map<string, AclToken>();
  private byHash = new Map<string, AclToken>();
  private bootstrapped = false;
  /** Index of the last change to any token or policy: authorizers cached before it are stale. */
  private changeIndex = 0;

  constructor() {
    this.restore(undefined);
  }

  get index(): number {
    return this.changeIndex;
  }

  get isBootstrapped(): boolean {
    return this.bootstrapped;
  }

  policy(name: string): AclPolicy | undefined {
    return name === managementPolicyName ? managementPolicy : this.policies.get(name);
  }

  allPolicies(): AclPolicy[] {
    return [managementPolicy, ...this.policies.values()];
  }

  token(accessor: string): AclToken | undefined {
    return this.tokens.get(accessor);
  }

  tokenBySecretHash(hash: string): AclToken | undefined {
    return hash === "" ? undefined : this.byHash.get(hash);
  }

  allTokens(): AclToken[] {
    return [...this.tokens.values()];
  }

  /** The first bootstrap makes the management token; later ones (a race) change nothing. */
  bootstrap(accessor: string, secretHash: string, index: number): AclOutcome {
    if (this.bootstrapped) return { ok: true };
    this.bootstrapped = true;
    return this.setToken(
      {
        accessor,
        secretHash,
        policies: [managementPolicyName],
        description: "bootstrap management token",
      },
      "create",
      index,
    );
  }

  setPolicy(policy: AclPolicy, index: number): AclOutcome {
    if (policy.name === managementPolicyName)
      return { ok: false, code: "conflict", message: `policy ${policy.name} is built in` };
    this.policies.set(policy.name, policy);
    this.changeIndex = index;
    return { ok: true, policy };
  }

  deletePolicy(name: string, index: number): AclOutcome {
    if (name === managementPolicyName)
      return { ok: false, code: "conflict", message: `policy ${name} is built in` };
    const policy = this.policies.get(name);
    if (policy === undefined) return { ok: false, code: "not-found", message: `no policy ${name}` };
    this.policies.delete(name);
    // Tokens lose it for good: a later policy of the same name grants nothing by surprise.
    for (const token of this.tokens.values()) {
      if (!token.policies.includes(name)) continue;
      const policies = token.policies.filter((held) => held !== name);
      this.putToken({ ...token, policies, modifyIndex: index });
    }
    this.changeIndex = index;
    return { ok: true, policy };
  }

  private putToken(token: AclToken): void {
    this.tokens.set(token.accessor, token);
    if (token.secretHash !== "") this.byHash.set(token.secretHash, token);
    // Every token but the anonymous one is found by its own secret: replicas must agree.
    assert(
      this.byHash.size === this.tokens.size - 1,
      `ACL tokens (${this.tokens.size}) and their secrets (${this.byHash.size}) disagree`,
    );
  }

  /** `create` refuses an accessor or secret that exists; `update` keeps the secret. */
  setToken(
    spec: Pick<AclToken, "accessor" | "secretHash" | "policies" | "description">,
    mode: "create" | "update",
    index: number,
  ): AclOutcome {
    const missing = spec.policies.find((name) => this.policy(name) === undefined);
    if (missing !== undefined)
      return { ok: false, code: "not-found", message: `no policy ${missing}` };
    const existing = this.tokens.get(spec.accessor);
    let token: AclToken;
    if (mode === "create") {
      if (existing !== undefined || this.byHash.has(spec.secretHash) || spec.secretHash === "")
        return { ok: false, code: "conflict", message: `token ${spec.accessor} exists` };
      token = { ...spec, createIndex: index, modifyIndex: index };
    } else {
      if (existing === undefined)
        return { ok: false, code: "not-found", message: `no token ${spec.accessor}` };
      token = {
        ...existing,
        policies: spec.policies,
        description: spec.description,
        modifyIndex: index,
      };
    }
    this.putToken(token);
    this.changeIndex = index;
    return { ok: true, token };
  }

  deleteToken(accessor: string, index: number): AclOutcome {
    if (accessor === anonymousAccessor)
      return { ok: false, code: "conflict", message: "the anonymous token cannot be deleted" };
    const token = this.tokens.get(accessor);
    if (token === undefined)
      return { ok: false, code: "not-found", message: `no token ${accessor}` };
    this.tokens.delete(accessor);
    this.byHash.delete(token.secretHash);
    this.changeIndex = index;
    return { ok: true, token };
  }

  toStored(): StoredAcl {
    const byName = <T>(items: T[], key: (item: T) => string) =>
      items.sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0));
    return {
      policies: byName([...this.policies.values()], (policy) => policy.name),
      tokens: byName([...this.tokens.values()], (token) => token.accessor),
      bootstrapped: this.bootstrapped,
      index: this.changeIndex,
    };
  }

  /** `stored` is absent from snapshots made before ACLs existed. */
  restore(stored: StoredAcl | undefined): void {
    this.policies = new Map((stored?.policies ?? []).map((policy) => [policy.name, policy]));
    this.tokens = new Map((stored?.tokens ?? []).map((token) => [token.accessor, token]));
    if (!this.tokens.has(anonymousAccessor)) this.tokens.set(anonymousAccessor, anonymousToken());
    this.byHash = new Map(
      [...this.tokens.values()]
        .filter((token) => token.secretHash !== "")
        .map((token) => [token.secretHash, token]),
    );
    this.bootstrapped = stored?.bootstrapped ?? false;
    this.changeIndex = stored?.index ?? 0;
  }
}
