/** What a query name asks for, in the registry's terms. */
export type DnsName =
  | { readonly kind: "apex" }
  | { readonly kind: "service"; readonly service: string; readonly tag: string | null }
  | { readonly kind: "instance"; readonly service: string; readonly id: string }
  /** Under our domain, but not a name we serve. */
  | { readonly kind: "unknown" }
  /** Not under our domain. */
  | { readonly kind: "outside" };

const label = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

/**
 * Parse a query name (any case, with or without the trailing dot) against `domain`
 * ("muster"): `<service>.service`, `<tag>.<service>.service`, `_<service>._tcp.service`,
 * `_<service>._<tag>.service` and `<id>.<service>.instance`.
 */
export function parseName(name: string, domain: string): DnsName {
  const labels = name.toLowerCase().replace(/\.$/, "").split(".");
  const domainLabels = domain.toLowerCase().replace(/\.$/, "").split(".");
  const tail = labels.slice(labels.length - domainLabels.length);
  if (labels.length < domainLabels.length || tail.join(".") !== domainLabels.join(".")) {
    return { kind: "outside" };
  }
  const own = labels.slice(0, labels.length - domainLabels.length);
  if (own.length === 0) return { kind: "apex" };
  const zone = own[own.length - 1];
  const rest = own.slice(0, -1);
  if (zone === "service") return serviceName(rest);
  if (zone === "instance" && rest.length >= 2) {
    const service = rest[rest.length - 1] as string;
    const id = rest.slice(0, -1).join(".");
    if (label.test(service) && /^[a-z0-9._-]{1,128}$/.test(id)) {
      return { kind: "instance", service, id };
    }
  }
  return { kind: "unknown" };
}

function serviceName(rest: readonly string[]): DnsName {
  const [first, second] = rest;
  if (rest.length === 1 && first !== undefined && label.test(first)) {
    return { kind: "service", service: first, tag: null };
  }
  if (rest.length !== 2 || first === undefined || second === undefined) return { kind: "unknown" };
  if (first.startsWith("_") && second.startsWith("_")) {
    // RFC 2782: _<service>._<protocol>; any protocol label other than tcp is a tag.
    const service = first.slice(1);
    const tag = second.slice(1);
    if (!label.test(service) || !label.test(tag)) return { kind: "unknown" };
    return { kind: "service", service, tag: tag === "tcp" ? null : tag };
  }
  if (label.test(first) && label.test(second)) {
    return { kind: "service", service: second, tag: first };
  }
  return { kind: "unknown" };
}

/** A valid name in presentation form: labels of 1..63 octets, at most 255 on the wire. */
export function isEncodableName(name: string): boolean {
  const trimmed = name.replace(/\.$/, "");
  if (trimmed === "") return true;
  const labels = trimmed.split(".");
  const wireLength = labels.reduce((total, label) => total + label.length + 1, 1);
  return wireLength <= 255 && labels.every((label) => label.length >= 1 && label.length <= 63);
}
