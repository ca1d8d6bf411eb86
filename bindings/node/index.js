'use strict'
// kr-serve's TypeScript API for Node.js: createEngine(), engine.loadModel(),
// `for await (const chunk of engine.createGenerator(...))`, getSchedulerStats(), dispose().
//
// This file is the JavaScript half: it checks option names and types (camelCase, with a
// hint when a snake_case name is used), turns the native generation into an async
// iterator, and wires `break` / `return()` / AbortSignal to cancellation. The engine
// itself runs in the native addon (bindings/node/src, Rust) on its own threads; every
// call here returns a promise and never blocks the event loop.

const { NativeEngine } = require('./native.js')

const ENGINE_OPTIONS = {
  models: 'array',
  memoryBudgetMib: 'number',
  kvCacheMib: 'number',
  maxNumSeqs: 'number',
  device: 'string',
  keepAlive: 'string',
}
const GENERATE_OPTIONS = {
  model: 'string',
  prompt: 'string',
  messages: 'array',
  maxTokens: 'number',
  temperature: 'number',
  topP: 'number',
  topK: 'number',
  seed: 'number',
  stop: 'array',
  logprobs: 'boolean',
  signal: 'object',
}
const CAMEL_CASE = {
  max_tokens: 'maxTokens',
  top_p: 'topP',
  top_k: 'topK',
  memory_budget_mib: 'memoryBudgetMib',
  kv_cache_mib: 'kvCacheMib',
  max_num_seqs: 'maxNumSeqs',
  keep_alive: 'keepAlive',
}
const INTEGERS = new Set(['memoryBudgetMib', 'kvCacheMib', 'maxNumSeqs', 'maxTokens', 'topK', 'seed'])

function kindOf(value) {
  return Array.isArray(value) ? 'array' : value === null ? 'null' : typeof value
}

/** Throws a TypeError naming the first unknown, misspelt or mistyped option. */
function checkOptions(what, options, spec) {
  if (options === undefined) return {}
  if (kindOf(options) !== 'object') {
    throw new TypeError(`${what}: expected an options object, got ${kindOf(options)}`)
  }
  for (const [key, value] of Object.entries(options)) {
    const want = spec[key]
    if (want === undefined) {
      const hint = CAMEL_CASE[key] ? ` (options are camelCase: use ${CAMEL_CASE[key]})` : ''
      throw new TypeError(`${what}: unknown option '${key}'${hint}; allowed: ${Object.keys(spec).join(', ')}`)
    }
    if (value === undefined) continue
    if (kindOf(value) !== want) {
      throw new TypeError(`${what}: option '${key}' must be a ${want}, got ${kindOf(value)}`)
    }
    if (want === 'number' && (!Number.isFinite(value) || (INTEGERS.has(key) && !Number.isInteger(value)))) {
      throw new TypeError(`${what}: option '${key}' must be a finite ${INTEGERS.has(key) ? 'integer' : 'number'}, got ${value}`)
    }
    // Integers cross to the engine as unsigned 32-bit values (seed: 53-bit): out of range
    // they would wrap instead of failing.
    const most = key === 'seed' ? Number.MAX_SAFE_INTEGER : 2 ** 32 - 1
    if (INTEGERS.has(key) && (value < 0 || value > most)) {
      throw new RangeError(`${what}: option '${key}' must be in 0..=${most}, got ${value}`)
    }
  }
  return options
}

/** Checks each element of an array option against `check`. */
function checkEach(what, key, items, check) {
  for (const [i, item] of (items ?? []).entries()) check(`${what}: ${key}[${i}]`, item)
}

const isString = (what, v) => {
  if (typeof v !== 'string') throw new TypeError(`${what} must be a string, got ${kindOf(v)}`)
}

function abortError(signal) {
  if (signal.reason instanceof Error) return signal.reason
  const err = new Error('the generation was aborted')
  err.name = 'AbortError'
  return err
}

class Engine {
  #native

  constructor(native) {
    this.#native = native
  }

  /** Loads a model (a path or a configured name); resolves with its description. */
  async loadModel(options) {
    const { model, name } = checkOptions('loadModel', options, { model: 'string', name: 'string' })
    if (model === undefined) throw new TypeError("loadModel: option 'model' (a path or a configured name) is required")
    const served = await this.#native.loadModel(model, name)
    return this.#native.listModels().find((m) => m.name === served) ?? { name: served, loaded: true }
  }

  /** Unloads a model now; resolves with false if it was not loaded. */
  async unloadModel(options) {
    const { model } = checkOptions('unloadModel', typeof options === 'string' ? { model: options } : options, { model: 'string' })
    if (model === undefined) throw new TypeError("unloadModel: option 'model' is required")
    return this.#native.unloadModel(model)
  }

  /** The configured models: name, path, loaded, bytes, active generations. */
  async listModels() {
    return this.#native.listModels()
  }

  /**
   * Streams a generation as an async iterator of chunks `{ text, tokenId, logprob?,
   * finishReason?, usage? }`. Leaving the loop (`break`, `return()`) or aborting `signal`
   * cancels the request and frees its cache; an aborted signal makes the loop throw.
   */
  createGenerator(options) {
    const { signal, ...request } = checkOptions('createGenerator', options, GENERATE_OPTIONS)
    checkEach('createGenerator', 'messages', request.messages, (what, m) => {
      const { role, content } = checkOptions(what, m, { role: 'string', content: 'string' })
      if (role === undefined || content === undefined) throw new TypeError(`${what}: a message needs a role and a content (strings)`)
    })
    checkEach('createGenerator', 'stop', request.stop, isString)
    if (signal !== undefined && !(signal instanceof AbortSignal)) {
      throw new TypeError("createGenerator: option 'signal' must be an AbortSignal")
    }
    return this.#stream(request, signal)
  }

  async *#stream(request, signal) {
    if (signal?.aborted) throw abortError(signal)
    const generation = await this.#native.start(request)
    const onAbort = () => generation.cancel()
    try {
      // The signal may have fired while the model loaded and the prompt was prepared.
      if (signal?.aborted) throw abortError(signal)
      signal?.addEventListener('abort', onAbort, { once: true })
      for (;;) {
        const chunk = await generation.next()
        if (chunk === null) {
          if (signal?.aborted) throw abortError(signal)
          return
        }
        yield chunk
        if (chunk.finishReason !== undefined) return
      }
    } finally {
      generation.cancel()
      signal?.removeEventListener('abort', onAbort)
    }
  }

  /** Runs a generation to its end: `{ text, tokenIds, finishReason, usage }`. */
  async generate(options) {
    let text = ''
    const tokenIds = []
    let last
    for await (const chunk of this.createGenerator(options)) {
      text += chunk.text
      tokenIds.push(chunk.tokenId)
      last = chunk
    }
    return { text, tokenIds, finishReason: last?.finishReason, usage: last?.usage }
  }

  /** The token ids of `text` as a prompt of `model` (BOS included when the model adds it). */
  async tokenize(options) {
    const { text, model } = checkOptions('tokenize', options, { text: 'string', model: 'string' })
    if (text === undefined) throw new TypeError("tokenize: option 'text' is required")
    return { tokens: await this.#native.tokenize(text, model) }
  }

  /** Scheduler statistics (fast path, window, batch sizes, queue, step times) of a model. */
  async getSchedulerStats(options) {
    const { model } = checkOptions('getSchedulerStats', options, { model: 'string' })
    return this.#native.schedulerStats(model)
  }

  /** Stops every model; later calls fail. Safe to call twice. */
  async dispose() {
    await this.#native.dispose()
  }
}

/** Creates an engine (no model is loaded until loadModel or the first generation). */
async function createEngine(options) {
  const checked = checkOptions('createEngine', options, ENGINE_OPTIONS)
  checkEach('createEngine', 'models', checked.models, (what, m) =>
    checkOptions(what, m, { name: 'string', model: 'string', aliases: 'array' }))
  return new Engine(new NativeEngine(checked))
}

module.exports = { createEngine, Engine }
