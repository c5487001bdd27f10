/**
 * The three `Reflect` metadata functions that @peculiar/x509's dependency injection (tsyringe) calls at
 * load time. A full polyfill (reflect-metadata) would be one more dependency for three small functions,
 * so this module provides them; import it before @peculiar/x509.
 */

type MetaMap = Map<unknown, unknown>;
const store = new WeakMap<object, Map<string | symbol | undefined, MetaMap>>();

function table(target: object, prop: string | symbol | undefined, create: boolean): MetaMap | undefined {
  let byProp = store.get(target);
  if (!byProp) {
    if (!create) return undefined;
    byProp = new Map();
    store.set(target, byProp);
  }
  let t = byProp.get(prop);
  if (!t && create) {
    t = new Map();
    byProp.set(prop, t);
  }
  return t;
}

interface ReflectMeta {
  defineMetadata?: (key: unknown, value: unknown, target: object, prop?: string | symbol) => void;
  getOwnMetadata?: (key: unknown, target: object, prop?: string | symbol) => unknown;
  getMetadata?: (key: unknown, target: object, prop?: string | symbol) => unknown;
}

const R = Reflect as unknown as ReflectMeta;
if (typeof R.getMetadata !== 'function') {
  R.defineMetadata = (key, value, target, prop) => {
    table(target, prop, true)!.set(key, value);
  };
  R.getOwnMetadata = (key, target, prop) => table(target, prop, false)?.get(key);
  R.getMetadata = (key, target, prop) => {
    // Metadata is inherited along the prototype chain, as reflect-metadata does.
    for (let t: object | null = target; t !== null; t = Object.getPrototypeOf(t) as object | null) {
      const m = table(t, prop, false);
      if (m?.has(key)) return m.get(key);
    }
    return undefined;
  };
}

export {};
