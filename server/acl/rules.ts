/**
 * ACL policies: rules on name prefixes, and what a set of policies allows. Pure: the state
 * machine stores policies, the HTTP, gRPC and DNS edges ask an Authorizer.
 */

/** `service`, `lock` and `election` rules name a prefix; the others cover the whole area. */
export const aclResources = ["service", "session", "lock", "election", "cluster", "acl"] as const;
export type AclResource = (typeof aclResources)[number];
export const prefixedResources: ReadonlySet<AclResource> = new Set(["service", "lock", "election"]);

export type AclAccess = "read" | "write" | "deny";

export interface AclRule {
  readonly resource: AclResource;
  /** "" matches every name; always "" for resources without names. */
  readonly prefix: string;
  readonly access: AclAccess;
}

export interface AclPolicy {
  readonly name: string;
  readonly description: string;
  readonly rules: readonly AclRule[];
}

/** What one request needs. `name` is "" for resources without names. */
export interface Permission {
  readonly resource: AclResource;
  readonly name: string;
  readonly access: "read" | "write";
}

/** The built-in policy of the management token: everything. */
export const managementPolicyName = "global-management";
export const managementPolicy: AclPolicy = {
  name: managementPolicyName,
  description: "every permission; the bootstrap token holds it",
  rules: aclResources.map((resource) => ({ resource, prefix: "", access: "write" })),
};

/** "service:web=write" or "cluster=read": the CLI's form of a rule. */
export function formatRule(rule: AclRule): string {
  const scope = prefixedResources.has(rule.resource)
    ? `${rule.resource}:${rule.prefix}`
    : rule.resource;
  return `${scope}=${rule.access}`;
}

export function parseRule(text: string): AclRule {
  const match = /^([a-z]+)(?::([^=]*))?=(read|write|deny)$/.exec(text.trim());
  const resource = match?.[1] as AclResource | undefined;
  if (match === null || resource === undefined || !aclResources.includes(resource)) {
    throw new Error(
      `"${text}" is not a rule like service:web=write, lock:jobs/=write, session=write or cluster=read`,
    );
  }
  const prefix = match[2];
  if (prefix !== undefined && !prefixedResources.has(resource))
    throw new Error(`"${text}": ${resource} rules take no prefix`);
  return { resource, prefix: prefix ?? "", access: match[3] as AclAccess };
}

export function describePermission(permission: Permission): string {
  return prefixedResources.has(permission.resource)
    ? `${permission.resource}:${permission.name} ${permission.access}`
    : `${permission.resource} ${permission.access}`;
}

const strength: Record<AclAccess, number> = { read: 0, write: 1, deny: 2 };

/**
 * What a token's policies allow. The rule with the longest matching prefix decides; among
 * rules of equal prefix, deny beats write beats read. No matching rule: denied.
 */
export class Authorizer {
  /** resource -> rules, longest prefix first. */
  private readonly rules = new Map<AclResource, AclRule[]>();

  constructor(policies: readonly AclPolicy[]) {
    for (const policy of policies) {
      for (const rule of policy.rules) {
        const list = this.rules.get(rule.resource) ?? [];
        list.push(rule);
        this.rules.set(rule.resource, list);
      }
    }
    for (const list of this.rules.values()) {
      list.sort(
        (a, b) => b.prefix.length - a.prefix.length || strength[b.access] - strength[a.access],
      );
    }
  }

  static readonly allowAll = new Authorizer([managementPolicy]);

  allows(permission: Permission): boolean {
    const rule = this.rules
      .get(permission.resource)
      ?.find((candidate) => permission.name.startsWith(candidate.prefix));
    if (rule === undefined || rule.access === "deny") return false;
    return rule.access === "write" || permission.access === "read";
  }
}
