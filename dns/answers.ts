import { isIP } from "node:net";
import { type Instance, isHealthy } from "../server/fsm/registry.js";
import { type DnsName, isEncodableName } from "./names.js";

export const rcodes = {
  noError: 0,
  formErr: 1,
  servFail: 2,
  nxDomain: 3,
  notImp: 4,
  refused: 5,
  /** RFC 6891: an EDNS version we do not speak. */
  badVers: 16,
};
export const types = { A: 1, CNAME: 5, SOA: 6, AAAA: 28, SRV: 33, OPT: 41, ANY: 255 } as const;
const classIn = 1;

/** A resource record in the shape dns2's encoder takes. */
export interface DnsRecord {
  readonly name: string;
  readonly type: number;
  readonly class: number;
  readonly ttl: number;
  readonly [field: string]: unknown;
}

export interface DnsAnswer {
  readonly rcode: number;
  readonly answers: readonly DnsRecord[];
  readonly authorities: readonly DnsRecord[];
  readonly additionals: readonly DnsRecord[];
}

/** What DNS needs of the registry: a service's instances, and whether it was ever known. */
export interface RegistryView {
  service(name: string): { readonly known: boolean; readonly instances: readonly Instance[] };
  /** Whether an instance of the service ever carried the tag (as far as this node saw). */
  tagKnown(service: string, tag: string): boolean;
  /** Whether DNS may answer for the service: ACLs' anonymous token reads it. */
  readable(service: string): boolean;
}

export interface AnswerOptions {
  /** Without the trailing dot, e.g. "muster". */
  readonly domain: string;
  readonly ttlSeconds: number;
  /** The SOA minimum: how long resolvers cache a negative answer. */
  readonly negativeTtlSeconds: number;
}

/**
 * The answer to one question; `order` arranges a service's healthy instances (see
 * `weightedOrder`). Pure: the same registry view and order give the same answer.
 */
export function answer(
  name: DnsName,
  qname: string,
  qtype: number,
  registry: RegistryView,
  options: AnswerOptions,
  order: (instances: Instance[]) => Instance[],
): DnsAnswer {
  const soa = [soaRecord(options)];
  const empty = { answers: [], additionals: [] };
  // REFUSED, not NXDOMAIN: the name may exist, and a denial must not be cached as its absence.
  if ((name.kind === "instance" || name.kind === "service") && !registry.readable(name.service))
    return { rcode: rcodes.refused, ...empty, authorities: [] };
  switch (name.kind) {
    case "outside":
      return { rcode: rcodes.refused, ...empty, authorities: [] };
    case "unknown":
      return { rcode: rcodes.nxDomain, ...empty, authorities: soa };
    case "apex":
      return qtype === types.SOA || qtype === types.ANY
        ? { rcode: rcodes.noError, answers: soa, authorities: [], additionals: [] }
        : { rcode: rcodes.noError, ...empty, authorities: soa };
    case "instance": {
      const { known, instances } = registry.service(name.service);
      const instance = instances.find((candidate) => candidate.id.toLowerCase() === name.id);
      if (instance === undefined) {
        return { rcode: rcodes.nxDomain, ...empty, authorities: soa };
      }
      const records = addressRecords(qname, instance, qtype, options.ttlSeconds, true);
      if (!known || records.length === 0)
        return { rcode: rcodes.noError, ...empty, authorities: soa };
      return { rcode: rcodes.noError, answers: records, authorities: [], additionals: [] };
    }
    case "service": {
      const { known, instances } = registry.service(name.service);
      const tagKnown = name.tag === null || registry.tagKnown(name.service, name.tag);
      if (!known || !tagKnown) return { rcode: rcodes.nxDomain, ...empty, authorities: soa };
      const healthy = order(
        instances.filter(
          (instance) =>
            isHealthy(instance.effectiveStatus) &&
            (name.tag === null || instance.tags.includes(name.tag)),
        ),
      );
      const answers: DnsRecord[] = [];
      const additionals: DnsRecord[] = [];
      for (const instance of healthy) {
        const target = instanceName(instance, options.domain);
        // An id too long for a DNS label has no name to point at.
        if ((qtype === types.SRV || qtype === types.ANY) && isEncodableName(target)) {
          answers.push({
            name: qname,
            type: types.SRV,
            class: classIn,
            ttl: options.ttlSeconds,
            priority: 1,
            weight: instance.weight,
            port: instance.port,
            target,
          });
          additionals.push(
            ...addressRecords(target, instance, types.ANY, options.ttlSeconds, true),
          );
        }
        // A service name has many addresses: host names have no place among them.
        if (qtype !== types.SRV)
          answers.push(...addressRecords(qname, instance, qtype, options.ttlSeconds, false));
      }
      if (answers.length === 0) return { rcode: rcodes.noError, ...empty, authorities: soa };
      return { rcode: rcodes.noError, answers, authorities: [], additionals };
    }
  }
}

export function instanceName(instance: Instance, domain: string): string {
  return `${instance.id.toLowerCase()}.${instance.service}.instance.${domain}`;
}

/** A/AAAA for an IP address, CNAME for a host name; only the types asked for. */
function addressRecords(
  name: string,
  instance: Instance,
  qtype: number,
  ttl: number,
  hostNameAsCname: boolean,
): DnsRecord[] {
  const family = isIP(instance.address);
  const base = { name, class: classIn, ttl };
  if (family === 4 && (qtype === types.A || qtype === types.ANY)) {
    return [{ ...base, type: types.A, address: instance.address }];
  }
  if (family === 6 && (qtype === types.AAAA || qtype === types.ANY)) {
    return [{ ...base, type: types.AAAA, address: instance.address }];
  }
  if (family === 0 && hostNameAsCname && qtype !== types.SRV && isEncodableName(instance.address)) {
    return [{ ...base, type: types.CNAME, domain: instance.address.replace(/\.$/, "") }];
  }
  return [];
}

function soaRecord(options: AnswerOptions): DnsRecord {
  return {
    name: options.domain,
    type: types.SOA,
    class: classIn,
    ttl: options.negativeTtlSeconds,
    primary: `ns.${options.domain}`,
    admin: `hostmaster.${options.domain}`,
    serial: 1,
    refresh: 3600,
    retry: 600,
    expiration: 86400,
    minimum: options.negativeTtlSeconds,
  };
}

/**
 * A weighted random order (Efraimidis-Spirakis): each record comes first with a
 * probability proportional to its weight, so weights count even for clients that take
 * the first address.
 */
export function weightedOrder<T>(
  items: readonly T[],
  weight: (item: T) => number,
  random: () => number,
): T[] {
  return items
    .map((item) => ({ item, key: random() ** (1 / Math.max(1, weight(item))) }))
    .sort((a, b) => b.key - a.key)
    .map(({ item }) => item);
}
