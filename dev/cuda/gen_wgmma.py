# Prints the wgmma wrappers of cuda_attention.cu (the operand lists are long).
def ss(n):
    r = n // 2
    outs = ", ".join(f"%{i}" for i in range(r))
    cons = ", ".join(f'"+f"(d[{i}])' for i in range(r))
    return f'''/* d[{r}] (+)= A(smem desc) · B(smem desc), m64n{n}k16, both K-major. */
static __device__ __forceinline__ void wgmma_ss_n{n}(float *d, uint64_t da, uint64_t db, int accumulate) {{
    asm volatile("{{\\n.reg .pred p;\\nsetp.ne.b32 p, %{r+2}, 0;\\n"
                 "wgmma.mma_async.sync.aligned.m64n{n}k16.f32.bf16.bf16 {{{outs}}}, %{r}, %{r+1}, p, 1, 1, 0, 0;\\n}}\\n"
                 : {cons}
                 : "l"(da), "l"(db), "r"(accumulate)
                 : "memory");
}}
'''
def rs(n):
    r = n // 2
    outs = ", ".join(f"%{i}" for i in range(r))
    cons = ", ".join(f'"+f"(d[{i}])' for i in range(r))
    return f'''/* d[{r}] += A(registers, 4 × bf16x2) · B(smem desc, MN-major), m64n{n}k16. */
static __device__ __forceinline__ void wgmma_rs_n{n}(float *d, const uint32_t *a, uint64_t db) {{
    asm volatile("{{\\n.reg .pred p;\\nsetp.ne.b32 p, 1, 0;\\n"
                 "wgmma.mma_async.sync.aligned.m64n{n}k16.f32.bf16.bf16 {{{outs}}}, "
                 "{{%{r}, %{r+1}, %{r+2}, %{r+3}}}, %{r+4}, p, 1, 1, 1;\\n}}\\n"
                 : {cons}
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db)
                 : "memory");
}}
'''
print(ss(64)); print(ss(128)); print(rs(128))
