// SPDX-License-Identifier: Apache-2.0
// Sends ETH to many addresses in one transaction: the fee wallet's gas
// top-ups of deposit addresses, batched. Same interface as the widely used
// Disperse contract (disperse.app, `disperseEther`), written out here so the
// test setup compiles it offline; it keeps nothing (every wei sent is
// forwarded, and the call reverts unless msg.value is exactly the sum).
pragma solidity ^0.8.20;

contract Disperse {
    function disperseEther(address[] calldata recipients, uint256[] calldata values) external payable {
        require(recipients.length == values.length, "length mismatch");
        uint256 total = 0;
        for (uint256 i = 0; i < recipients.length; i++) {
            total += values[i];
            (bool ok, ) = recipients[i].call{value: values[i]}("");
            require(ok, "transfer failed");
        }
        require(total == msg.value, "value mismatch");
    }
}
