import { createHash } from "node:crypto";
import type { AclTable } from "../fsm/acl.js";
import { anonymousAccessor } from "../fsm/acl.js";
import { Authorizer } from "./rules.js";

/** Who made a request, as far as ACLs care. */
export interface Caller {
  /** The token's accessor; "anonymous" without a token. */
  readonly accessor: string;
  readonly authorizer: Authorizer;
}

/** Tokens are stored as this hash of their secret. */
export function hashSecret(secret: string): string {
  return createHash("sha256").update(secret).digest("hex");
}

const maxCached = 10_000;
/** A caller nothing is checked for: ACLs are off, or a member checked the request already. */
export const unrestricted: Caller = {
  accessor: anonymousAccessor,
  authorizer: Authorizer.allowAll,
};
const nobody: Caller = { accessor: anonymousAccessor, authorizer: new Authorizer([]) };

/**
 * Tokens to callers, from this node's replicated ACL state. Authorizers are cached until
 * the next ACL change, so a request costs one hash and one lookup.
 */
export class AclResolver {
  private readonly cache = new Map<string, Caller>();
  private cachedAt = -1;

  constructor(
    private readonly flag: boolean,
    private readonly table: AclTable,
  ) {}

  /**
   * On with --acl-enabled, and on every node once the cluster has a management token: a
   * node started without the flag must not open a cluster that has ACLs.
   */
  get enabled(): boolean {
    return this.flag || this.table.isBootstrapped;
  }

  /** The caller a secret names (null: the anonymous token); undefined when no token has it. */
  resolve(secret: string | null): Caller | undefined {
    if (!this.enabled) return unrestricted;
    if (this.cachedAt !== this.table.index) {
      this.cache.clear();
      this.cachedAt = this.table.index;
    }
    const key = secret === null ? "" : hashSecret(secret);
    const cached = this.cache.get(key);
    if (cached !== undefined) return cached;
    const token =
      secret === null ? this.table.token(anonymousAccessor) : this.table.tokenBySecretHash(key);
    if (token === undefined) return undefined;
    const policies = token.policies.flatMap((name) => this.table.policy(name) ?? []);
    const caller = { accessor: token.accessor, authorizer: new Authorizer(policies) };
    if (this.cache.size >= maxCached) this.cache.clear();
    this.cache.set(key, caller);
    return caller;
  }

  /** What requests without a token, and DNS queries, may see. */
  anonymous(): Caller {
    return this.resolve(null) ?? nobody;
  }
}
