// The kr-serve Node package against a real model (SmolLM2-135M from $KR_TEST_MODELS, or
// ../shared/models beside the checkout), in the style of the original system's own tests:
// createEngine(), loadModel(), `for await` over createGenerator(), an early break,
// getSchedulerStats(), dispose(). Run with `npm test` after `npm run build`.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import path from 'node:path'
import { createEngine } from '../index.mjs'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..')
const models = path.resolve(root, process.env.KR_TEST_MODELS ?? '../shared/models')
const SMOLLM2 = path.join(models, 'smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf')
const STORIES = path.join(models, 'stories260K/stories260K.bin')
const present = existsSync(SMOLLM2) && existsSync(STORIES)
if (!present && process.env.KR_TEST_MODELS) {
  throw new Error(`KR_TEST_MODELS is set but ${SMOLLM2} is missing`)
}
if (!present) console.error(`skipped: the test models are not in ${models} (set KR_TEST_MODELS; scripts/fetch-test-models.sh downloads them)`)
const it = present ? test : test.skip

let engine
let model

before(async () => {
  if (!present) return
  engine = await createEngine({ kvCacheMib: 64 })
  model = (await engine.loadModel({ model: SMOLLM2 })).name
})

after(async () => {
  await engine?.dispose()
})

/** Polls the engine's counters until no KV block is in use. */
async function kvBlocksFreed() {
  for (let i = 0; i < 200; i++) {
    const stats = await engine.getSchedulerStats({ model })
    if (stats.engine.kv_blocks_used === 0) return stats
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
  assert.fail('KV blocks still in use 2 s after the generation ended')
}

it('streams a generation, breaks out of a second one early, reports stats', async () => {
  const prompt = 'The capital of France is'
  let text = ''
  const chunks = []
  for await (const chunk of engine.createGenerator({ model, prompt, maxTokens: 16, temperature: 0 })) {
    text += chunk.text
    chunks.push(chunk)
  }
  assert.equal(chunks.length, 16)
  assert.ok(text.trim().length > 0, 'some text was generated')
  assert.equal(chunks.at(-1).finishReason, 'length')
  assert.equal(chunks.at(-1).usage.completionTokens, 16)
  assert.ok(chunks.slice(0, -1).every((c) => c.finishReason === undefined))
  // Greedy decoding is deterministic: the same request gives the same text.
  const again = await engine.generate({ model, prompt, maxTokens: 16, temperature: 0 })
  assert.equal(again.text, text)
  assert.deepEqual(again.tokenIds, chunks.map((c) => c.tokenId))

  let seen = 0
  for await (const chunk of engine.createGenerator({ model, prompt: 'Once upon a time', maxTokens: 200, temperature: 0.8, seed: 7 })) {
    assert.equal(typeof chunk.tokenId, 'number')
    if (++seen === 3) break
  }
  assert.equal(seen, 3)
  const stats = await kvBlocksFreed()
  assert.ok(stats.engine.requests_aborted >= 1, 'the early break aborted the request')
  assert.ok(stats.fast_path.executions >= 1)
  assert.equal(stats.fast_path.fast_path_rate, stats.fast_path.rate)
  assert.equal(stats.queue.running, 0)
  assert.equal(stats.model, model)
})

it('an AbortSignal cancels a running generation', async () => {
  const controller = new AbortController()
  let seen = 0
  await assert.rejects(async () => {
    for await (const _ of engine.createGenerator({ model, prompt: 'Hello', maxTokens: 200, signal: controller.signal })) {
      if (++seen === 2) controller.abort()
    }
  }, { name: 'AbortError' })
  assert.equal(seen, 2)
  await kvBlocksFreed()
  await assert.rejects(
    engine.generate({ model, prompt: 'Hello', signal: AbortSignal.abort() }),
    { name: 'AbortError' },
  )
  // Aborted while the request is being prepared, before its first chunk.
  const early = new AbortController()
  const first = engine.createGenerator({ model, prompt: 'Hello', maxTokens: 200, signal: early.signal }).next()
  early.abort()
  await assert.rejects(first, { name: 'AbortError' })
  await kvBlocksFreed()
})

it('chat messages, stop strings, logprobs and tokenize', async () => {
  const chat = await engine.generate({
    model,
    messages: [{ role: 'user', content: 'Say hello.' }],
    maxTokens: 8,
    temperature: 0,
  })
  assert.ok(chat.usage.promptTokens > 5, 'the chat template wrapped the message')
  const { tokens } = await engine.tokenize({ model, text: 'Hello world' })
  assert.ok(tokens.length >= 2 && tokens.every(Number.isInteger))
  const plain = await engine.generate({ model, prompt: 'One, two, three,', maxTokens: 12, temperature: 0 })
  const word = plain.text.trim().split(/\s+/)[1]
  assert.ok(word, `a second word in ${JSON.stringify(plain.text)}`)
  const stopped = await engine.generate({ model, prompt: 'One, two, three,', maxTokens: 12, temperature: 0, stop: [word] })
  assert.equal(stopped.finishReason, 'stop')
  assert.ok(!stopped.text.includes(word))
  for await (const chunk of engine.createGenerator({ model, prompt: 'Hi', maxTokens: 2, logprobs: true })) {
    assert.ok(chunk.logprob <= 0)
  }
})

it('never blocks the event loop while it loads and generates', async () => {
  let ticks = 0
  const timer = setInterval(() => ticks++, 1)
  try {
    const other = await createEngine({ kvCacheMib: 16 })
    await other.loadModel({ model: SMOLLM2, name: 'second' })
    const during = ticks
    await other.generate({ model: 'second', prompt: 'Once upon a time', maxTokens: 24, temperature: 0 })
    await other.dispose()
    assert.ok(during > 0, 'timers ran while the model loaded')
    assert.ok(ticks > during, 'timers ran while it generated')
  } finally {
    clearInterval(timer)
  }
})

it('several configured models: load by name, list, unload', async () => {
  const two = await createEngine({
    kvCacheMib: 16,
    models: [
      { name: 'smol', model: SMOLLM2, aliases: ['chat'] },
      { name: 'stories', model: STORIES },
    ],
  })
  try {
    const loaded = await two.loadModel({ model: 'stories' })
    assert.equal(loaded.name, 'stories')
    assert.equal(loaded.loaded, true)
    const story = await two.generate({ model: 'stories', prompt: 'Once upon a time', maxTokens: 8, temperature: 0 })
    assert.equal(story.usage.completionTokens, 8)
    await assert.rejects(two.generate({ prompt: 'x' }), /several models are configured/)
    const viaAlias = await two.generate({ model: 'chat', prompt: 'Hi', maxTokens: 2 })
    assert.equal(viaAlias.tokenIds.length, 2)
    const listed = await two.listModels()
    assert.deepEqual(listed.map((m) => [m.name, m.loaded]), [['smol', true], ['stories', true]])
    assert.equal(await two.unloadModel('stories'), true)
    assert.equal((await two.listModels()).find((m) => m.name === 'stories').loaded, false)
    assert.equal(await two.unloadModel({ model: 'stories' }), false)
  } finally {
    await two.dispose()
  }
})

it('bad input gets errors naming the option and the allowed values', async () => {
  assert.throws(() => engine.createGenerator({ model, prompt: 'x', max_tokens: 5 }), /use maxTokens/)
  assert.throws(() => engine.createGenerator({ model, prompt: 'x', maxTokens: '5' }), /'maxTokens' must be a number/)
  assert.throws(() => engine.createGenerator({ model, messages: [{ role: 'user' }] }), /messages\[0\].*content/)
  await assert.rejects(engine.generate({ model, prompt: 'x', temperature: -1 }), /temperature/)
  assert.throws(() => engine.createGenerator({ model, prompt: 'x', maxTokens: -1 }), /maxTokens' must be in 0\.\.=4294967295/)
  assert.throws(() => engine.createGenerator({ model, prompt: 'x', signal: {} }), /must be an AbortSignal/)
  await assert.rejects(engine.getSchedulerStats({ model: 'nope' }), /nope.*does not exist/)
  await assert.rejects(engine.generate({ model, prompt: 'x', maxTokens: 100000 }), /max_tokens.*1\.\.=/)
  await assert.rejects(engine.generate({ model, prompt: 'x', messages: [] }), /exactly one of prompt/)
  await assert.rejects(engine.generate({ model: 'nope', prompt: 'x' }), /nope.*does not exist/)
  await assert.rejects(engine.loadModel({ model: '/no/such/model.gguf' }), /neither a configured model/)
  await assert.rejects(createEngine({ device: 'tpu' }), /unknown device 'tpu'/)
  await assert.rejects(createEngine({ kvCacheMib: 0 }), /kvCacheMib: 0/)
})

it('a disposed engine says so', async () => {
  const gone = await createEngine()
  await gone.dispose()
  await gone.dispose()
  await assert.rejects(gone.loadModel({ model: SMOLLM2 }), /disposed/)
})
