// Compile-only check of index.d.ts (`npm run typecheck`): the seeds' usage typed against the
// package's declarations. A wrong or missing type fails `tsc --noEmit`.
import { createEngine, type Chunk, type SchedulerStats } from '../index.js'

async function main(): Promise<void> {
  const engine = await createEngine({ kvCacheMib: 64, device: 'cpu', models: [{ name: 'smol', model: '/m.gguf' }] })
  const loaded = await engine.loadModel({ model: '/m.gguf' })
  const name: string = loaded.name
  let text = ''
  for await (const chunk of engine.createGenerator({ model: name, prompt: 'Hi', maxTokens: 8, temperature: 0 })) {
    const c: Chunk = chunk
    text += c.text
    const id: number = c.tokenId
    if (c.finishReason === 'length' && c.usage) console.log(id, c.usage.completionTokens)
  }
  const controller = new AbortController()
  const reply = await engine.generate({
    model: name,
    messages: [{ role: 'user', content: text }],
    stop: ['\n'],
    seed: 1,
    signal: controller.signal,
  })
  const ids: number[] = reply.tokenIds
  const { tokens } = await engine.tokenize({ text: 'Hello', model: name })
  const stats: SchedulerStats = await engine.getSchedulerStats({ model: name })
  const executions: number | undefined = stats.fast_path?.executions
  console.log(ids.length, tokens.length, executions, (await engine.listModels()).map((m) => m.loaded))
  await engine.unloadModel(name)
  await engine.dispose()
  // @ts-expect-error options are camelCase: max_tokens is not one
  engine.createGenerator({ prompt: 'x', max_tokens: 5 })
}

void main
