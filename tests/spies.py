"""A stand-in for a (possibly autotuned) Triton kernel that counts `kernel[grid](...)` launches (and a
FastLaunch's `launch_known`), so tests can prove the Triton path really ran."""


class LaunchSpy:
    def __init__(self, kernel):
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        self.launches += 1
        return self.kernel[grid]

    def launch_known(self, plan, args, aligned, pointers=None):
        self.launches += 1
        return self.kernel.launch_known(plan, args, aligned, pointers)
